# What the celery_worker role manages on a host, in one read-only pass (tasks/probe.yml): the
# tasks that would find everything in place are skipped, so a re-deploy costs one round trip
# here instead of two module runs per file.
# Arguments: PYTHON VENV APP_DIR USER "PACKAGE..." PATH...
# Output, one item a line:
#   python <major.minor>                        of PYTHON, the virtualenv's base interpreter
#   package <name> <dpkg status>                "install ok installed" when installed
#   user <name:gecos:home:shell> <group>        empty fields when the user does not exist
#   group <name>                                when the user's group exists
#   path <path> <owner:group:mode> <sha1|->     or "path <path> absent"; PATHs, then the .pth file
#   pip <name==version>                         distributions installed in the virtualenv
#   app <sha1>  <relative path>                 files of APP_DIR, caches left out
#   instance <node> enabled                     celery@<node>.service is wanted by celery.service
#   instance <node> <active state>              celery@<node>.service is loaded and not inactive/failed
#   legacy-unit celery.service                  celery.service is the former all-nodes Type=forking unit
#   unit <unit> <enablement> / unit <unit> <active state>
#                                               of celery.service and celerybeat.service
python=$1 venv=$2 app_dir=$3 user=$4 packages=$5
shift 5
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])') || exit 1
echo "python $version"
for package in $packages; do
  echo "package $package $(dpkg-query -W -f='${Status}' "$package" 2>/dev/null)"
done
echo "user $(getent passwd "$user" | cut -d: -f1,5,6,7) $(id -gn "$user" 2>/dev/null)"
if getent group "$user" >/dev/null; then echo "group $user"; fi
for path in "$@" "$venv/lib/python$version/site-packages/celery_app.pth"; do
  if [ -d "$path" ]; then
    echo "path $path $(stat -c %U:%G:%a "$path") -"
  elif [ -f "$path" ]; then
    echo "path $path $(stat -c %U:%G:%a "$path") $(sha1sum < "$path" | cut -c1-40)"
  else
    echo "path $path absent"
  fi
done
# <name>-<version>.dist-info (name escaped with "_", so the first "-" splits): cheaper than pip freeze.
for info in "$venv/lib/python$version/site-packages/"*.dist-info; do
  [ -d "$info" ] && basename "$info" .dist-info | sed 's/^\([^-]*\)-/pip \1==/'
done
for link in /etc/systemd/system/celery.service.wants/celery@*.service; do
  if [ -L "$link" ] || [ -e "$link" ]; then
    name=${link##*/celery@}
    echo "instance ${name%.service} enabled"
  fi
done
systemctl show --property=Id,ActiveState 'celery@*.service' 2>/dev/null | {
  emit() {
    case $state in ''|inactive|failed) ;; *) name=${id#celery@}; echo "instance ${name%.service} $state" ;; esac
    id='' state=''
  }
  id='' state=''
  while IFS='=' read -r key value; do
    case $key in Id) id=$value ;; ActiveState) state=$value ;; '') emit ;; esac
  done
  emit
}
for unit in celery.service celerybeat.service; do
  echo "unit $unit $(systemctl is-enabled "$unit" 2>/dev/null)"
  echo "unit $unit $(systemctl is-active "$unit" 2>/dev/null)"
done
if grep -qs '^Type=forking' /etc/systemd/system/celery.service; then echo "legacy-unit celery.service"; fi
if cd "$app_dir" 2>/dev/null; then
  find . -type f ! -path '*/__pycache__/*' -exec sha1sum {} + | sed 's|^\([0-9a-f]*\)  \./|app \1  |'
fi
exit 0
