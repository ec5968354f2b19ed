# netkey %postun ($1: 0 on erase). RPM has no purge: the state (/var/lib/netkey), a
# modified configuration (saved as .rpmsave) and the `netkey` user stay, as Fedora's
# packaging guidelines ask; delete them by hand to remove every trace.
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 0 ]; then
	# The package does not own /etc/netkey; remove it if nothing was left in it.
	rmdir /etc/netkey 2>/dev/null || :
fi
exit 0
