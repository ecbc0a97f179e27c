# What the celery_worker role manages on a host, in one read-only pass (tasks/probe.yml): the
# tasks that would find everything in place are skipped, so a re-deploy costs one round trip
# here instead of two module runs per file. Every host runs it on every deploy, so it forks few
# processes: one call each to dpkg-query, stat, sha1sum and systemctl, however many items.
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
#   unit <unit> <enablement>                    of celery.service and celerybeat.service ("" if none)
#   unit <unit> <active state>                  of celery.service and celerybeat.service
#   legacy-unit celery.service                  celery.service is the former all-nodes Type=forking unit
#   release <id>                                /opt/celery/current is a link to releases/<id>
python=$1 venv=$2 app_dir=$3 user=$4 packages=$5
shift 5
# /usr/bin/python3 -> python3.11 names the version without starting Python.
target=$(readlink -f "$python")
case ${target##*/python} in
  [0-9]*.[0-9]*) version=${target##*/python} ;;
  *) version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])') || exit 1 ;;
esac
echo "python $version"
# shellcheck disable=SC2086 # the package list is split on purpose
dpkg-query -W -f='package ${Package} ${Status}\n' $packages 2>/dev/null
echo "user $(getent passwd "$user" | cut -d: -f1,5,6,7) $(id -gn "$user" 2>/dev/null)"
if getent group "$user" >/dev/null; then echo "group $user"; fi
site=$venv/lib/python$version/site-packages
set -- "$@" "$site/celery_app.pth"
present=''
for path; do
  if [ -e "$path" ]; then present="$present$path
"; else echo "path $path absent"; fi
done
# Owner, group and mode of each present path; the checksum of files, "-" for directories.
if [ -n "$present" ]; then
  {
    printf '%s' "$present" | tr '\n' '\0' | xargs -0 sha1sum 2>/dev/null | sed 's/^/sum /'
    printf '%s' "$present" | tr '\n' '\0' | xargs -0 stat -L -c 'stat %n %U:%G:%a %F'
  } | awk '$1 == "sum" { sum[$3] = $2; next }
           { print "path", $2, $3, ($4 == "directory" ? "-" : sum[$2]) }'
fi
# <name>-<version>.dist-info (name escaped with "_", so the first "-" splits): cheaper than pip freeze.
ls "$site" 2>/dev/null | sed -n 's/^\([^-]*\)-\(.*\)\.dist-info$/pip \1==\2/p'
for link in /etc/systemd/system/celery.service.wants/celery@*.service; do
  if [ -L "$link" ] || [ -e "$link" ]; then
    name=${link##*/celery@}
    echo "instance ${name%.service} enabled"
  fi
done
systemctl show --property=Id,UnitFileState,ActiveState celery.service celerybeat.service 'celery@*.service' 2>/dev/null | {
  emit() {
    case $id in
      celery.service | celerybeat.service) echo "unit $id $enablement"; echo "unit $id $state" ;;
      celery@*.service)
        case $state in '' | inactive | failed) ;; *) name=${id#celery@}; echo "instance ${name%.service} $state" ;; esac ;;
    esac
    id='' state='' enablement=''
  }
  id='' state='' enablement=''
  while IFS='=' read -r key value; do
    case $key in Id) id=$value ;; ActiveState) state=$value ;; UnitFileState) enablement=$value ;; '') emit ;; esac
  done
  emit
}
if grep -qs '^Type=forking' /etc/systemd/system/celery.service; then echo "legacy-unit celery.service"; fi
if current=$(readlink /opt/celery/current 2>/dev/null); then echo "release ${current##*/}"; fi
if cd "$app_dir" 2>/dev/null; then
  find . -type f ! -path '*/__pycache__/*' -exec sha1sum {} + | sed 's|^\([0-9a-f]*\)  \./|app \1  |'
fi
exit 0
