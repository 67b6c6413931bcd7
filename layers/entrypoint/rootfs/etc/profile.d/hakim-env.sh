# Login shells get the image env (the variant's config.env, shipped as a file instead of the
# image config's Env key) as defaults: a variable already set is kept. See hakim's
# docs/entrypoint.md.
if [ -r /usr/lib/hakim/image.env ]; then
	while IFS= read -r _hakim_line || [ -n "$_hakim_line" ]; do
		case $_hakim_line in '' | '#'*) continue ;; esac
		_hakim_key=${_hakim_line%%=*}
		[ "$_hakim_key" != "$_hakim_line" ] || continue
		case $_hakim_key in '' | [0-9]* | *[!A-Za-z0-9_]*) continue ;; esac
		eval "_hakim_set=\${$_hakim_key+x}"
		if [ -z "$_hakim_set" ]; then
			eval "$_hakim_key=\${_hakim_line#*=}"
			export "${_hakim_key?}"
		fi
	done </usr/lib/hakim/image.env
	unset _hakim_line _hakim_key _hakim_set
fi
