#!/usr/bin/env bash
# A throwaway one-node Kubernetes for Swell's kube lane: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, the snapshot-controller, containerd
# (with runc and a bridge CNI network) and the kubelet, all host processes
# started from the binaries of KUBE_BIN (kubelet & co.) and Debian's packages.
# Everything it writes lives in DIR, except what the kubelet and the node
# plugin insist on (/var/lib/kubelet, /var/lib/swell, /var/log/containers,
# /var/lib/cni, /run/netns, /run/containerd), which `down` removes again;
# why each setting is what it is: README.md beside this script.
#
#   cluster.sh up DIR KUBE_BIN CRDS   start everything (KUBE_BIN: the unpacked binaries, CRDS: the
#                                     VolumeSnapshot CRDs); DIR/env names KUBECONFIG and friends;
#                                     prints where each log is
#   cluster.sh down DIR           stop every process by its pid, remove every mount, loop device,
#                                 cgroup, iptables chain, network link and file it made, restore the
#                                 kernel settings; safe to run after any failure, and twice
#   cluster.sh check-clean DIR    fail, listing them, if any of those is left
#
# `up` calls `down` itself when a step fails. Ports: etcd 12379/12380, the
# API server 6443 on the node's address, the kubelet 10250/10248 on 127.0.0.1.
set -euo pipefail

die() { echo "kube: $*" >&2; exit 1; }
usage() { sed -n '11,18p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

[[ $# -ge 2 ]] || usage
readonly CMD=$1
DIR=$(realpath -m -- "$2")
readonly DIR
readonly RUN=$DIR/run LOG=$DIR/log PKI=$DIR/pki
readonly CTRD_SOCK=$DIR/containerd/containerd.sock
readonly KUBELET_ROOT=/var/lib/kubelet
readonly BRIDGE=swell-cni0
readonly POD_SUBNET=10.244.0.0/24
# What the kubelet, containerd and the node plugin create outside DIR; `up`
# refuses to start when one exists (it would be someone else's), `down`
# removes them.
readonly HOST_PATHS=(/var/lib/kubelet /var/lib/swell /var/log/pods /var/log/containers /var/lib/cni /run/containerd /run/netns)
# Kernel settings the kubelet (kernel.*, vm.*) and the bridge plugin
# (ip_forward) change; saved by `up`, restored by `down`.
readonly SYSCTLS=(kernel.panic kernel.panic_on_oops vm.overcommit_memory vm.panic_on_oom
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.ip_forward net.ipv6.conf.all.forwarding)
started=$SECONDS

say() { echo "kube: $* ($((SECONDS - started)) s)"; }

# --- processes --------------------------------------------------------------------------------

# read_line, alive, wait_gone, terminate, bounded.
# shellcheck source=e2e/processes.sh
source "$(dirname "${BASH_SOURCE[0]}")/../processes.sh"

# True when PID runs with DIR on its command line (guards against pid reuse
# and against touching anything that is not this cluster's).
ours() {
  local arg
  [[ -r /proc/$1/cmdline ]] || return 1
  while IFS= read -r -d '' arg; do
    [[ $arg == *"$DIR"* ]] && return 0
  done <"/proc/$1/cmdline" 2>/dev/null
  return 1
}

pid_of() {
  local pid
  [[ -f $RUN/$1.pid ]] || return 0
  read_line pid "$RUN/$1.pid" || return 0
  [[ $pid =~ ^[0-9]+$ ]] && ours "$pid" && echo "$pid"
  return 0
}

# Starts NAME in the background, its output in LOG/NAME.log, its pid in RUN/NAME.pid.
start() {
  local name=$1
  shift
  "$@" </dev/null >>"$LOG/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
  echo "kube: $name started (pid $!), log $LOG/$name.log"
}

stop() {
  local pid
  pid=$(pid_of "$1")
  [[ -z $pid ]] || terminate "${2:-20}" "$pid" || return 1
  rm -f "$RUN/$1.pid"
}

# Waits up to SECS for CHECK (a command) to succeed; dies naming WHAT and LOG.
wait_for() {
  local secs=$1 what=$2 log=$3 deadline
  shift 3
  deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { tail -n 30 "$log" >&2 || true; die "$what not ready after ${secs}s (log: $log)"; }
    sleep 0.3
  done
}

# --- up ---------------------------------------------------------------------------------------

node_ip() {
  # The address the kubelet registers (it refuses a loopback one): the source
  # of the default route. The API server listens there, so pods reach it.
  ip -4 -o route get 1.1.1.1 | sed -n 's/.* src \([0-9.]*\).*/\1/p'
}

cert() {
  # cert NAME SUBJECT [SAN]: a P-256 key and a certificate signed by the CA.
  local name=$1 subject=$2 san=${3:-}
  openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/$name.key" 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subject" -out "$PKI/$name.csr" 2>/dev/null
  local ext=$PKI/$name.ext
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=serverAuth,clientAuth"
    [[ -z $san ]] || echo "subjectAltName=$san"
  } >"$ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 2 -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$ext"
}

kubeconfig() {
  # kubeconfig NAME: DIR/NAME.kubeconfig using the client certificate NAME.
  cat >"$DIR/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: swell-test
  cluster: { server: "https://$NODE_IP:6443", certificate-authority: "$PKI/ca.crt" }
users:
- name: $1
  user: { client-certificate: "$PKI/$1.crt", client-key: "$PKI/$1.key" }
contexts:
- name: swell-test
  context: { cluster: swell-test, user: $1 }
current-context: swell-test
EOF
}

write_pki() {
  mkdir -p "$PKI"
  openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$PKI/ca.key" -subj /CN=swell-test-ca -days 2 -out "$PKI/ca.crt" 2>/dev/null
  local host
  host=$(hostname)
  cert apiserver /CN=kube-apiserver \
    "IP:$NODE_IP,IP:127.0.0.1,IP:10.96.0.1,DNS:$host,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert admin "/O=system:masters/CN=swell-test-admin"
  cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
  cert controller-manager /CN=system:kube-controller-manager
  cert scheduler /CN=system:kube-scheduler
  cert kubelet "/O=system:nodes/CN=system:node:$host"
  cert snapshot-controller "/O=system:masters/CN=swell-test-snapshot-controller"
  openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/sa.key" 2>/dev/null
  openssl ec -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  local name
  for name in admin controller-manager scheduler kubelet snapshot-controller; do kubeconfig "$name"; done
}

write_containerd_config() {
  mkdir -p "$DIR/containerd" "$DIR/cni/net.d" "$DIR/cni/ipam"
  cat >"$DIR/containerd/config.toml" <<EOF
# Written by e2e/kube/cluster.sh: a containerd of its own, everything under $DIR.
version = 2
root = "$DIR/containerd/root"
state = "$DIR/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$CTRD_SOCK"
[plugins."io.containerd.internal.v1.opt"]
  path = "$DIR/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  # The pause image the lane builds and imports (no registry here).
  sandbox_image = "swell.test/pause:1"
  # No CAP_SYS_RESOURCE: writing a lower oom_score_adj fails every sandbox.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      # cgroup v1 without systemd: the kubelet's cgroupfs driver.
      SystemdCgroup = false
      Root = "$DIR/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$DIR/cni/net.d"
EOF
  # A bridge of its own with no NAT and no route off the machine: pods reach
  # the node's address (API server, Ceph) and each other; the API server and
  # the kubelet reach pods. Pods get their own network and hostname, so two
  # controller replicas neither fight over ports nor share a leader identity.
  cat >"$DIR/cni/net.d/10-swell-test.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "swell-test",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "$POD_SUBNET" }]],
        "routes": [{ "dst": "0.0.0.0/0" }],
        "dataDir": "$DIR/cni/ipam"
      }
    }
  ]
}
EOF
}

write_kubelet_config() {
  mkdir -p "$DIR/kubelet/pki" "$DIR/kubelet/volume-plugins"
  cat >"$DIR/kubelet/config.yaml" <<EOF
# Written by e2e/kube/cluster.sh.
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This host has cgroup v1 and no systemd.
failCgroupV1: false
cgroupDriver: cgroupfs
# No CAP_SYS_RESOURCE: the kubelet cannot lower its own OOM score.
oomScoreAdj: 0
containerRuntimeEndpoint: unix://$CTRD_SOCK
# Only the API server talks to it, through 127.0.0.1 (it reaches the node by
# its hostname, which resolves there).
address: 127.0.0.1
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
authentication:
  anonymous: { enabled: false }
  webhook: { enabled: true }
  x509: { clientCAFile: "$PKI/ca.crt" }
authorization: { mode: Webhook }
# kubelet calls NodeExpandVolume for a mounted volume only when it syncs the
# pod, every syncFrequency (default 1m: the claim waits up to a minute after
# the resizer is done). 10s keeps the lane short; the scenarios measure it.
# SWELL_KUBE_SYNC_FREQUENCY=1m measures the default.
syncFrequency: ${SWELL_KUBE_SYNC_FREQUENCY:-10s}
# Images are preloaded (no registry): never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# The disk is shared with other jobs: evict only when it is really full.
evictionHard: { memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%" }
failSwapOn: false
resolvConf: /etc/resolv.conf
podLogsDirectory: $DIR/pod-logs
volumePluginDir: $DIR/kubelet/volume-plugins
EOF
}

unpack_check() {
  local bin=$1 name
  for name in kubelet kube-apiserver kube-controller-manager kube-scheduler snapshot-controller; do
    [[ -x $bin/$name ]] || die "$bin/$name is missing"
  done
  local program
  for program in etcd containerd containerd-shim-runc-v2 runc ctr /usr/lib/cni/bridge /usr/lib/cni/host-local /usr/lib/cni/loopback openssl; do
    command -v "$program" >/dev/null || die "$program is missing (e2e/kube/install.sh installs it)"
  done
}

up() {
  local bin=${1:?usage: cluster.sh up DIR KUBE_BIN CRDS} crds=${2:?usage: cluster.sh up DIR KUBE_BIN CRDS}
  bin=$(realpath -- "$bin")
  [[ -n $(ls "$crds"/*.yaml 2>/dev/null) ]] || die "no CRDs in $crds"
  unpack_check "$bin"
  [[ ! -e $DIR/run ]] || die "$DIR holds a cluster already; run: cluster.sh down $DIR"
  local path
  for path in "${HOST_PATHS[@]}"; do
    [[ ! -e $path ]] || die "$path exists: another kubelet or an earlier run owns it; remove it first"
  done
  mkdir -p "$RUN" "$LOG" "$DIR/pod-logs"
  NODE_IP=$(node_ip)
  [[ -n $NODE_IP ]] || die "no address on the default route for the node"
  # From here on, a failure tears down whatever started.
  up_done=0
  trap 'if ((!up_done)); then echo "kube: up failed; tearing down" >&2; down || true; fi' EXIT
  save_host_state
  write_pki
  write_containerd_config
  write_kubelet_config
  cat >"$DIR/env" <<EOF
export KUBECONFIG=$DIR/admin.kubeconfig
export SWELL_KUBE_NODE_IP=$NODE_IP
export SWELL_KUBE_CONTAINERD=$CTRD_SOCK
export SWELL_KUBELET_LOG=$LOG/kubelet.log
export SWELL_KUBE_LOGS=$LOG
EOF
  say "certificates and configuration written to $DIR"

  start etcd etcd --name swell-test --data-dir "$DIR/etcd" \
    --listen-client-urls http://127.0.0.1:12379 --advertise-client-urls http://127.0.0.1:12379 \
    --listen-peer-urls http://127.0.0.1:12380 --initial-advertise-peer-urls http://127.0.0.1:12380 \
    --initial-cluster swell-test=http://127.0.0.1:12380
  start containerd containerd --config "$DIR/containerd/config.toml"
  start kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers=http://127.0.0.1:12379 \
    --bind-address="$NODE_IP" --advertise-address="$NODE_IP" --secure-port=6443 \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc \
    --service-cluster-ip-range=10.96.0.0/16 \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --allow-privileged=true \
    --enable-aggregator-routing=true \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=Hostname,InternalIP \
    --profiling=false
  # shellcheck disable=SC1091
  source "$DIR/env"
  wait_for 60 "kube-apiserver" "$LOG/kube-apiserver.log" kubectl get --raw /readyz
  say "kube-apiserver ready"
  start kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig="$DIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$DIR/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$DIR/controller-manager.kubeconfig" \
    --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
    --use-service-account-credentials=true --leader-elect=false \
    --bind-address=127.0.0.1 --profiling=false
  start kube-scheduler "$bin/kube-scheduler" \
    --kubeconfig="$DIR/scheduler.kubeconfig" \
    --authentication-kubeconfig="$DIR/scheduler.kubeconfig" \
    --authorization-kubeconfig="$DIR/scheduler.kubeconfig" \
    --leader-elect=false --bind-address=127.0.0.1 --profiling=false
  wait_for 30 containerd "$LOG/containerd.log" ctr -a "$CTRD_SOCK" version
  say "containerd ready"
  # Images first: the kubelet needs the pause image for its first pod.
  "$(dirname "$0")/images.sh" "$DIR" "$bin" || die "importing the images failed"
  say "images imported"
  start kubelet "$bin/kubelet" --config="$DIR/kubelet/config.yaml" \
    --kubeconfig="$DIR/kubelet.kubeconfig" --root-dir="$KUBELET_ROOT" --cert-dir="$DIR/kubelet/pki" \
    --v=2
  wait_for 60 "the node" "$LOG/kubelet.log" kubectl wait --for=condition=Ready node --all --timeout=1s
  say "node $(hostname) Ready"
  # The snapshot CRDs and controller: installed once per cluster, not by Swell.
  kubectl apply -f "$crds" >/dev/null
  start snapshot-controller "$bin/snapshot-controller" --kubeconfig="$DIR/snapshot-controller.kubeconfig" \
    --leader-election=false
  kubectl wait --for=condition=Established crd --all --timeout=30s >/dev/null
  # shellcheck disable=SC2034 # read by the EXIT trap
  up_done=1
  say "cluster up; KUBECONFIG=$DIR/admin.kubeconfig; logs in $LOG: $(cd "$LOG" && echo *.log)"
}

# Records what the host looks like before the cluster, for `down` and `check-clean`.
save_host_state() {
  local key
  for key in "${SYSCTLS[@]}"; do
    sysctl -n "$key" >/dev/null 2>&1 && echo "$key=$(sysctl -n "$key")"
  done >"$DIR/sysctl.saved"
  chains >"$DIR/chains.saved"
  all_loops >"$DIR/loops.saved"
}

# --- down -------------------------------------------------------------------------------------

# Every iptables chain, as "CMD TABLE CHAIN", for v4 and v6.
chains() {
  local cmd table
  for cmd in iptables ip6tables; do
    command -v "$cmd" >/dev/null || continue
    for table in filter nat mangle; do
      "$cmd" -w 5 -t "$table" -S 2>/dev/null | sed -n "s/^-N \(.*\)/$cmd $table \1/p" || true
    done
  done
}

# Mount points under the given prefixes, deepest first (from /proc/mounts, which never blocks).
mounts_under() {
  local target prefix
  while read -r _ target _; do
    target=${target//\\040/ }
    for prefix in "$@"; do
      if [[ $target == "$prefix" || $target == "$prefix"/* ]]; then echo "$target"; fi
    done
  done </proc/mounts | awk '{ print length, $0 }' | sort -rn | cut -d' ' -f2-
}

# Every attached loop device as "DEVICE BACKING", from sysfs (which never
# touches the file: one on a dead FUSE would hang a stat).
all_loops() {
  local f back
  for f in /sys/block/loop*/loop/backing_file; do
    read_line back "$f" || continue
    f=${f#/sys/block/}
    echo "/dev/${f%%/*} $back"
  done
}

# The cluster's loop devices: those on Swell's host paths, and any attached
# since `up` (loops.saved). A device a pod attached shows its file as seen
# from the root of a mount that died with the pod's container
# (`/swell-<hex>` behind a gone rbd-fuse, `/local/volumes/<id>.img`), no
# path of this host. A new device whose file exists on this host outside
# those paths is not counted: another program's, attached meanwhile.
our_loops() {
  local dev back shown
  while read -r dev back; do
    [[ -n $dev ]] || continue
    if [[ $back == /var/lib/swell/* || $back == "$KUBELET_ROOT"/* || $back == "$DIR"/* ]]; then
      echo "$dev $back"
      continue
    fi
    [[ -f $DIR/loops.saved ]] || continue
    grep -qxF "$dev $back" "$DIR/loops.saved" && continue
    shown=${back% (deleted)}
    # Bounded: a file on someone's hung FUSE would block the test for good.
    [[ $shown == "$back" ]] && timeout 5 test -e "$shown" && continue
    echo "$dev $back"
  done < <(all_loops)
}

# The pids of containerd shims serving this cluster, and every process below them.
shim_tree() {
  local pid arg shims=() stat ppid
  for pid in $(pgrep -f containerd-shim-runc-v2 || true); do
    ours "$pid" && shims+=("$pid")
  done
  ((${#shims[@]})) || return 0
  # Descendants, breadth first, from /proc/*/stat (ppid is field 4).
  local -A parent=()
  for stat in /proc/[0-9]*/stat; do
    read_line arg "$stat" || continue
    pid=${stat#/proc/}
    pid=${pid%/stat}
    arg=${arg##*) }
    read -r _ ppid _ <<<"$arg"
    parent[$pid]=$ppid
  done
  local queue=("${shims[@]}") out=() p
  while ((${#queue[@]})); do
    p=${queue[0]}
    queue=("${queue[@]:1}")
    out+=("$p")
    for pid in "${!parent[@]}"; do
      [[ ${parent[$pid]} == "$p" ]] && queue+=("$pid")
    done
  done
  echo "${out[@]}"
}

down() {
  set +e
  local failed=0 pid target dev back key value line cmd table chain
  [[ -d $DIR ]] || { echo "kube: nothing in $DIR"; return 0; }
  # The kubelet first, so nothing restarts the containers stopped next.
  stop kubelet 30 || failed=1
  stop snapshot-controller || failed=1
  # Every container and sandbox: through containerd while it runs, then by
  # pid whatever is left below this cluster's shims.
  if [[ -S $CTRD_SOCK ]]; then
    for id in $(timeout 20 ctr -a "$CTRD_SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
      timeout 20 ctr -a "$CTRD_SOCK" -n k8s.io tasks kill -a -s SIGKILL "$id" >/dev/null 2>&1
    done
    for id in $(timeout 20 ctr -a "$CTRD_SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
      timeout 20 ctr -a "$CTRD_SOCK" -n k8s.io tasks delete -f "$id" >/dev/null 2>&1
    done
  fi
  read -ra pids <<<"$(shim_tree)"
  ((${#pids[@]} == 0)) || terminate 10 "${pids[@]}" || failed=1
  stop containerd || failed=1
  stop kube-scheduler || failed=1
  stop kube-controller-manager || failed=1
  stop kube-apiserver || failed=1
  stop etcd || failed=1

  # Mounts: the node plugin's (staging and publish mounts of volumes still
  # in use when the lane stopped), the kubelet's (secrets, projected
  # volumes, its root bind), containerd's (rootfs, shm) and the network
  # namespaces. Unmounted deepest first; a busy one lazily.
  while read -r target; do
    [[ -n $target ]] || continue
    bounded 20 umount "$target" || bounded 20 umount -l "$target" || { echo "kube: cannot unmount $target" >&2; failed=1; }
  done < <(mounts_under "$KUBELET_ROOT" /var/lib/swell "$DIR" /run/netns /var/run/netns /run/containerd)
  # Loop devices of Swell's volumes (local files, or rbd-fuse files whose
  # daemon died with the node plugin's container), and any attached since `up`.
  while read -r dev back; do
    [[ -n $dev ]] || continue
    bounded 20 losetup -d "$dev" || { echo "kube: cannot detach $dev ($back)" >&2; failed=1; }
  done < <(our_loops)

  # The kubelet's cgroups, in every hierarchy, deepest first (empty by now).
  for root in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [[ -d $root ]] || continue
    find "$root" -depth -type d -exec rmdir {} + 2>/dev/null
    [[ ! -d $root ]] || { echo "kube: cannot remove cgroup $root" >&2; failed=1; }
  done

  # iptables chains that were not there before (the kubelet's KUBE-*):
  # first the rules jumping to them, then the chains.
  if [[ -f $DIR/chains.saved ]]; then
    while read -r cmd table chain; do
      grep -qxF "$cmd $table $chain" "$DIR/chains.saved" && continue
      while read -r line; do
        # shellcheck disable=SC2086 # the rule's own words
        "$cmd" -w 5 -t "$table" -D ${line#-A } 2>/dev/null
      done < <("$cmd" -w 5 -t "$table" -S 2>/dev/null | grep -E -- "^-A .* -j $chain( |$)")
      "$cmd" -w 5 -t "$table" -F "$chain" 2>/dev/null
      "$cmd" -w 5 -t "$table" -X "$chain" 2>/dev/null || { echo "kube: cannot remove $cmd -t $table $chain" >&2; failed=1; }
    done < <(chains)
  fi

  # The pod network's bridge (the veths went with their namespaces).
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link delete "$BRIDGE" || failed=1
  fi

  # Kernel settings, back to what they were.
  if [[ -f $DIR/sysctl.saved ]]; then
    while IFS='=' read -r key value; do
      [[ $(sysctl -n "$key" 2>/dev/null) == "$value" ]] && continue
      sysctl -q -w "$key=$value" >/dev/null || { echo "kube: cannot restore $key=$value" >&2; failed=1; }
    done <"$DIR/sysctl.saved"
  fi

  # Files outside DIR: only once nothing is mounted under them.
  for target in "${HOST_PATHS[@]}"; do
    [[ -e $target ]] || continue
    if [[ -n $(mounts_under "$target") ]]; then
      echo "kube: not removing $target: still mounted under it" >&2
      failed=1
    else
      rm -rf --one-file-system -- "$target" || failed=1
    fi
  done
  rm -rf "$RUN"
  ((failed == 0)) || { echo "kube: down left something behind (see above)" >&2; return 1; }
  echo "kube: down after $((SECONDS - started)) s; logs kept in $LOG"
}

# --- check-clean ------------------------------------------------------------------------------

check_clean() {
  local left=() pid target dev back key value cmd table chain path
  for pid in $(pgrep -f -- "$DIR" || true); do
    [[ $pid == "$$" ]] && continue
    ours "$pid" && left+=("process $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline" | cut -c1-120)")
  done
  # Whatever ran in a pod (the node plugin's rbd-fuse too) sits in a kubepods cgroup.
  while read -r pid; do
    [[ -n $pid ]] && left+=("process $pid in a pod's cgroup: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-120)")
  done < <(grep -l kubepods /proc/[0-9]*/cgroup 2>/dev/null | cut -d/ -f3)
  while read -r target; do
    [[ -n $target ]] && left+=("mount $target")
  done < <(mounts_under "$KUBELET_ROOT" /var/lib/swell "$DIR" /run/netns /var/run/netns /run/containerd)
  while read -r dev back; do
    [[ -n $dev ]] && left+=("loop device $dev on $back")
  done < <(our_loops)
  for path in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [[ -d $path ]] && left+=("cgroup $path")
  done
  if [[ -f $DIR/chains.saved ]]; then
    while read -r cmd table chain; do
      grep -qxF "$cmd $table $chain" "$DIR/chains.saved" || left+=("iptables chain $chain ($cmd -t $table)")
    done < <(chains)
  fi
  ip link show "$BRIDGE" >/dev/null 2>&1 && left+=("network link $BRIDGE")
  if [[ -f $DIR/sysctl.saved ]]; then
    while IFS='=' read -r key value; do
      [[ $(sysctl -n "$key" 2>/dev/null) == "$value" ]] || left+=("sysctl $key=$(sysctl -n "$key") (was $value)")
    done <"$DIR/sysctl.saved"
  fi
  for path in "${HOST_PATHS[@]}"; do
    [[ -e $path ]] && left+=("path $path")
  done
  if ((${#left[@]})); then
    echo "kube: the machine is not clean after the lane:" >&2
    printf '  - %s\n' "${left[@]}" >&2
    return 1
  fi
  echo "kube: clean: no process, mount, loop device, cgroup, iptables chain, link, changed sysctl or file of the cluster left"
}

case $CMD in
  up) up "${3:-}" "${4:-}" ;;
  down) down ;;
  check-clean) check_clean ;;
  *) usage ;;
esac
