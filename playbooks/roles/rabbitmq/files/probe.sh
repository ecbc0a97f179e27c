# What the rabbitmq role manages on the broker, in one read-only pass (tasks/probe.yml): the tasks
# that would find everything in place are skipped (rabbitmqctl-based modules are slow).
# Environment: PACKAGES VHOST USER_NAME COOKIE CTL_TIMEOUT. Standard input: the password of USER_NAME
# (never on a command line or in the environment). Arguments: PATH... Needs ctl (files/rabbitmqctl.sh).
# Bounds: each rabbitmqctl run CTL_TIMEOUT s (a broker that does not answer in time fails the probe, exit
# 124, naming the command); systemctl by its D-Bus call timeout (25 s); the rest reads local files.
# Output, one item a line:
#   package <name> <dpkg status>                "install ok installed" when installed
#   path <path> <owner:group:mode> <sha1|->     or "path <path> absent"; "-" for a directory
#   service stale                               a PATH changed after the running broker started
#   cookie <path> <owner:group:mode>            the Erlang cookie (never its content)
#   cookie-sha1 <sha1>                          and its SHA-1 (a cluster's nodes share one cookie)
#   vhost <name> | user <name> <[tags]>         of the running broker
#   permission <vhost> <conf> <write> <read>    permissions of USER_NAME, on every vhost
#   password ok                                 the password on standard input authenticates USER_NAME
IFS= read -r USER_PASSWORD || USER_PASSWORD=''
for package in $PACKAGES; do
  echo "package $package $(dpkg-query -W -f='${Status}' "$package" 2>/dev/null)"
done
for path in "$@"; do
  owner_mode=$(stat -c %U:%G:%a "$path" 2>/dev/null) || { echo "path $path absent"; continue; }
  sum=-
  if [ -f "$path" ]; then sum=$(sha1sum < "$path" | cut -c1-40); fi
  echo "path $path $owner_mode $sum"
done
# A file changed after the broker started (a deploy that failed before its restart): restart it.
started=$(systemctl show -p ActiveEnterTimestamp --value rabbitmq-server.service 2>/dev/null)
if [ -n "$started" ] && systemctl -q is-active rabbitmq-server.service; then
  newest=$(stat -c %Y "$@" 2>/dev/null | sort -n | tail -n 1)
  if [ "${newest:-0}" -gt "$(date -d "$started" +%s)" ]; then echo "service stale"; fi
fi
if [ -f "$COOKIE" ]; then
  echo "cookie $COOKIE $(stat -c %U:%G:%a "$COOKIE")"
  echo "cookie-sha1 $(tr -d '\n' < "$COOKIE" | sha1sum | cut -c1-40)"
fi
command -v rabbitmqctl >/dev/null || exit 0
# Vhosts, users and the user's permissions in one rabbitmqctl run: each run starts an Erlang VM
# (about a second of CPU), the longest part of a re-deploy's broker probe. USER_NAME is the role's
# fixed user name (letters only), safe inside the Erlang string. A broker that is not running answers
# nothing (every task then runs); one that does not answer in time fails the probe.
listing=$(ctl -q eval "
  [io:format(\"vhost ~s~n\", [V]) || V <- rabbit_vhost:list_names()],
  [io:format(\"user ~s ~p~n\", [proplists:get_value(user, U), proplists:get_value(tags, U)])
   || U <- rabbit_auth_backend_internal:list_users()],
  try rabbit_auth_backend_internal:list_user_permissions(<<\"$USER_NAME\">>) of
    Permissions -> [io:format(\"permission ~s ~s ~s ~s~n\", [proplists:get_value(K, P) || K <- [vhost, configure, write, read]])
                    || P <- Permissions]
  catch _:_ -> ok
  end,
  done." 2>/dev/null)
[ $? -ne 124 ] || exit 124
printf '%s\n' "$listing" | grep -v -e '^done$' -e '^$'
# The password goes on standard input (printf is a shell builtin): never on a command line. Exactly
# the command and the user name, no -q (see files/rabbitmqctl.sh); the CLI's own output is dropped.
printf '%s\n' "$USER_PASSWORD" | ctl authenticate_user "$USER_NAME" >/dev/null 2>&1
case $? in
  0) echo "password ok" ;;
  124) exit 124 ;;
esac
exit 0
