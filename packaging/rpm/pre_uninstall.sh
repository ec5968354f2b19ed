# netkey %preun ($1: 0 on erase, 1 or more on upgrade): stop and disable on erase only.
if [ "$1" -eq 0 ] && command -v systemctl >/dev/null; then
	if [ -d /run/systemd/system ]; then
		systemctl disable --now netkeyd.service >/dev/null 2>&1 || :
	else
		systemctl disable netkeyd.service >/dev/null 2>&1 || :
	fi
fi
exit 0
