# `ctl ARG...`: rabbitmqctl ARG..., bounded, for the role's scripts (tasks/probe.yml, tasks/configure.yml
# prepend this file). Environment: CTL_TIMEOUT, seconds one run may take (it starts an Erlang VM: about a
# second). A run that does not finish in time is ended (TERM, KILL 5 s later) and reported on the
# script's standard error (fd 3: also when the caller drops the CLI's own), naming the command; the
# exit status is then 124.
# It runs as user rabbitmq: as root, Debian's wrapper (/usr/sbin/rabbitmqctl) runs the CLI through `su`,
# which starts it in a session of its own, where `timeout` cannot end it, and the VM left behind would
# hold the task's pipes open. setpriv execs instead: the VM stays in the process group timeout ends.
# The password commands (add_user, change_password, authenticate_user) read it from standard input only
# when given exactly the command and the user name: since RabbitMQ 3.13 (rabbitmq-server #10108, also in
# late 3.12.x) the wrapper starts the VM with `-noinput` unless its word count says the password is to be
# read, and every word counts (-q, -n ...): `rabbitmqctl -q add_user celery` then waits forever.
exec 3>&2
ctl() {
  for _ctl_command; do
    case $_ctl_command in -*) ;; *) break ;; esac
  done
  timeout -k 5 "$CTL_TIMEOUT" setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups rabbitmqctl "$@" 3>&-
  _ctl_status=$?
  case $_ctl_status in
    124 | 137)
      echo "rabbitmqctl $_ctl_command did not finish within $CTL_TIMEOUT s (ended)" >&3
      return 124 ;;
  esac
  return "$_ctl_status"
}
