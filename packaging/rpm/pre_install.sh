# netkey %pre: the `netkey` system user and group ($1: 1 on install, 2 on upgrade).
getent group netkey >/dev/null || groupadd -r netkey
getent passwd netkey >/dev/null || \
	useradd -r -g netkey -M -d /var/lib/netkey -s /sbin/nologin -c "netkey licence server" netkey
exit 0
