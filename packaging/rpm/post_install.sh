# netkey %post ($1: 1 on install, 2 or more on upgrade). StateDirectory= creates the state
# directory under systemd; create it here too so netkeyd also runs as `netkey` without
# systemd. 0700: it holds the daemon's private identity.
if [ ! -d /var/lib/netkey ]; then
	install -d -o netkey -g netkey -m 0700 /var/lib/netkey
fi
if [ "$1" -eq 1 ] && command -v systemctl >/dev/null; then
	# Works without a running systemd too (it only creates the symlink).
	systemctl enable netkeyd.service >/dev/null 2>&1 || :
fi
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || :
	if [ "$1" -eq 1 ]; then
		systemctl start netkeyd.service >/dev/null 2>&1 || :
	else
		systemctl try-restart netkeyd.service >/dev/null 2>&1 || :
	fi
fi
exit 0
