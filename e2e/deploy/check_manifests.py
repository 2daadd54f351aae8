"""Offline checks of deploy/: every overlay renders with `kubectl kustomize`,
every rendered object validates against the Kubernetes 1.32 OpenAPI schema
(kubernetes-validate, strict), and the properties Swell depends on hold.
Each Swell-specific check has a negative control (NEGATIVE_CONTROLS): the
rendered manifests mutated to break what it checks, on which it must fail;
a check that finds nothing to check fails too.

Run by e2e/test.sh after the debug binaries are built (their --help is the
truth for flag and environment names):

    target/deploy-venv/bin/python e2e/deploy/check_manifests.py
"""

import copy
import os
import re
import subprocess
import sys
import tomllib
import unittest

import kubernetes_validate
import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OVERLAYS = sorted(os.listdir(os.path.join(ROOT, "deploy", "overlays")))
KUBERNETES_VERSION = "1.32.0"
BIN_DIR = os.environ.get("SWELL_BIN_DIR", os.path.join(ROOT, "target", "debug"))
NAMESPACE = "swell-system"
SIDECAR_TAG = re.compile(r"^v\d+\.\d+\.\d+$")
CLUSTER_SCOPED = {
    "Namespace", "CSIDriver", "StorageClass", "VolumeSnapshotClass", "ClusterRole", "ClusterRoleBinding", "ValidatingWebhookConfiguration", "ClusterIssuer"}
# Custom resources the Kubernetes schema does not know (cert-manager, for the
# webhook's certificate; the snapshot CRDs, for VolumeSnapshotClass): checked
# for shape only here, and by their own tests below.
CUSTOM_GROUPS = {"cert-manager.io", "snapshot.storage.k8s.io"}


def render(path):
    out = subprocess.run(["kubectl", "kustomize", os.path.join(ROOT, path)], capture_output=True, text=True, timeout=60, check=False)
    if out.returncode != 0:
        raise AssertionError(f"kubectl kustomize {path} failed: {out.stderr}")
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def help_text(binary):
    out = subprocess.run([os.path.join(BIN_DIR, binary), "--help"], capture_output=True, text=True, timeout=30, check=True)
    return out.stdout


def seconds(duration):
    """A Go duration such as 30s, 1m30s or 500ms, in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a duration: {duration!r}")
    return sum(float(n) * units[u] for n, u in parts)


def flag(container, name):
    """The value of --name=value in a container's args, or True for a bare --name."""
    for arg in container.get("args", []):
        if arg == f"--{name}":
            return True
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


def image_repo_tag(image):
    repo, _, tag = image.rpartition(":")
    return (repo, tag) if "/" not in tag else (image, "")


class Rendered:
    """One overlay's objects, with lookups the checks share."""

    def __init__(self, overlay, path=None):
        self.overlay = overlay
        self.objects = render(path or os.path.join("deploy", "overlays", overlay))

    def of_kind(self, kind):
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind, name):
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        if len(found) != 1:
            raise AssertionError(f"{self.overlay}: expected one {kind} {name}, found {len(found)}")
        return found[0]

    def pod_specs(self):
        return [(o["metadata"]["name"], o["spec"]["template"]["spec"]) for o in self.objects if o["kind"] in ("Deployment", "DaemonSet")]

    def csi_pod_specs(self):
        """The pods serving CSI on a socket (controller and node), not the webhook."""
        return [(name, spec) for name, spec in self.pod_specs() if flag(swell_container(spec), "endpoint") is not None]

    def driver_name(self):
        (driver,) = self.of_kind("CSIDriver")
        return driver["metadata"]["name"]


def container(spec, name):
    found = [c for c in spec["containers"] if c["name"] == name]
    if len(found) != 1:
        raise AssertionError(f"expected one container {name}, found {len(found)}")
    return found[0]


def swell_container(spec):
    found = [c for c in spec["containers"] if c.get("command", [""])[0].startswith("swell-")]
    if len(found) != 1:
        raise AssertionError(f"expected one Swell container, found {[c['name'] for c in found]}")
    return found[0]


def sidecar(spec, image_name):
    found = [c for c in spec["containers"] if image_repo_tag(c["image"])[0].endswith("/" + image_name)]
    if len(found) != 1:
        raise AssertionError(f"expected one {image_name} container, found {len(found)}")
    return found[0]


def locate(container, path):
    """Which volume (and path inside it) a container path lies on."""
    mounts = [m for m in container.get("volumeMounts", []) if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")]
    if not mounts:
        raise AssertionError(f"{container['name']}: {path} lies on no volume")
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    return mount["name"], os.path.relpath(path, mount["mountPath"])


def driver_socket(spec):
    endpoint = flag(swell_container(spec), "endpoint")
    if not isinstance(endpoint, str) or not endpoint.startswith("unix://"):
        raise AssertionError(f"the Swell container's --endpoint is not a unix:// socket: {endpoint!r}")
    return locate(swell_container(spec), endpoint[len("unix://"):])


class Manifests(unittest.TestCase):
    rendered = {}
    help = {}

    @classmethod
    def setUpClass(cls):
        cls.rendered = {overlay: Rendered(overlay) for overlay in OVERLAYS}
        # The webhook is installed on its own (it needs cert-manager).
        cls.webhook = Rendered("webhook", os.path.join("deploy", "webhook"))
        binaries = {"swell-controller", "swell-node"}
        for rendered in [*cls.rendered.values(), cls.webhook]:
            binaries |= {swell_container(spec)["command"][0] for _, spec in rendered.pod_specs()}
        cls.help = {binary: help_text(binary) for binary in sorted(binaries)}
        with open(os.path.join(ROOT, "Cargo.toml"), "rb") as f:
            cls.version = tomllib.load(f)["workspace"]["package"]["version"]

    def each(self):
        for overlay, rendered in self.rendered.items():
            with self.subTest(overlay=overlay):
                yield rendered

    def each_with_webhook(self):
        yield from self.each()
        with self.subTest(overlay="webhook"):
            yield self.webhook

    def test_overlays_are_local_and_rbd(self):
        self.assertEqual(sorted(self.rendered), ["local", "rbd"])

    def test_every_object_validates_against_the_kubernetes_schema(self):
        for rendered in self.each_with_webhook():
            for obj in rendered.objects:
                with self.subTest(kind=obj["kind"], name=obj["metadata"]["name"]):
                    if obj["apiVersion"].split("/")[0] in CUSTOM_GROUPS:
                        # A VolumeSnapshotClass keeps its fields at the top, like a StorageClass.
                        body = "driver" if obj["kind"] == "VolumeSnapshotClass" else "spec"
                        self.assertTrue(obj["metadata"]["name"] and obj.get(body), f"{obj['kind']} has no {body}")
                    else:
                        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)

    def test_the_schema_check_rejects_a_misspelt_field(self):
        broken = {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "x"}, "provisioner": "p", "allowVolumeExpansions": True}
        with self.assertRaises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)

    def test_storage_classes_allow_expansion_and_name_the_driver(self):
        for rendered in self.each():
            classes = rendered.of_kind("StorageClass")
            self.assertTrue(classes, "no StorageClass")
            for sc in classes:
                self.assertEqual(sc["provisioner"], rendered.driver_name(), sc["metadata"]["name"])
                self.assertIs(sc.get("allowVolumeExpansion"), True, sc["metadata"]["name"])
                self.assertEqual(sc["parameters"]["backend"], rendered.overlay, sc["metadata"]["name"])

    def test_each_overlay_snapshots_through_the_driver(self):
        for rendered in self.each():
            (snapshot_class,) = rendered.of_kind("VolumeSnapshotClass")
            self.assertEqual(snapshot_class["apiVersion"], "snapshot.storage.k8s.io/v1")
            self.assertEqual(snapshot_class["driver"], rendered.driver_name())
            self.assertIn(snapshot_class["deletionPolicy"], ("Delete", "Retain"))
            # Swell's CreateSnapshot refuses parameters.
            self.assertNotIn("parameters", snapshot_class)
            spec = rendered.one("Deployment", "swell-controller")["spec"]["template"]["spec"]
            self.assertGreater(seconds(flag(sidecar(spec, "csi-snapshotter"), "timeout")), 10)

    def test_the_controller_may_do_what_its_sidecars_ask(self):
        # And what swell-controller's auto-grow asks: patch claims, create Events.
        needed = {
            ("", "persistentvolumes"): {"get", "list", "watch", "create", "patch", "delete"},
            # swell-controller's auto-grow patches a claim's storage request.
            ("", "persistentvolumeclaims"): {"get", "list", "watch", "update", "patch"},
            ("", "persistentvolumeclaims/status"): {"patch"},
            # The provisioner reads a WaitForFirstConsumer claim's selected node.
            ("", "nodes"): {"get"},
            ("storage.k8s.io", "storageclasses"): {"get", "list", "watch"},
            ("snapshot.storage.k8s.io", "volumesnapshots"): {"get", "list"},
            ("snapshot.storage.k8s.io", "volumesnapshotcontents"): {"get", "list", "watch", "update", "patch"},
            ("snapshot.storage.k8s.io", "volumesnapshotcontents/status"): {"update", "patch"},
            ("snapshot.storage.k8s.io", "volumesnapshotclasses"): {"get", "list", "watch"},
        }
        for rendered in self.each():
            granted = {}
            for rule in rendered.one("ClusterRole", "swell-controller")["rules"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        granted.setdefault((group, resource), set()).update(rule["verbs"])
            for key, verbs in needed.items():
                with self.subTest(resource=key):
                    self.assertLessEqual(verbs, granted.get(key, set()))

    def test_the_driver_needs_no_attacher(self):
        # Swell has no ControllerPublishVolume; attachRequired would hang every pod.
        for rendered in self.each():
            (driver,) = rendered.of_kind("CSIDriver")
            self.assertIs(driver["spec"]["attachRequired"], False)
            self.assertIn(driver["spec"].get("fsGroupPolicy"), ("File", "ReadWriteOnceWithFSType", "None"))

    def test_the_resizer_runs_with_a_timeout_longer_than_the_backend_deadline(self):
        default = re.search(r"--backend-timeout-secs <[A-Z_]+>.*?\[default: (\d+)\]", self.help["swell-controller"], re.S)
        self.assertIsNotNone(default, "swell-controller --help names no --backend-timeout-secs default")
        for rendered in self.each():
            spec = rendered.one("Deployment", "swell-controller")["spec"]["template"]["spec"]
            resizer = sidecar(spec, "csi-resizer")
            timeout = flag(resizer, "timeout")
            self.assertIsInstance(timeout, str, "csi-resizer has no --timeout")
            backend = flag(swell_container(spec), "backend-timeout-secs") or default.group(1)
            self.assertGreater(seconds(timeout), float(backend))
            self.assertEqual(flag(resizer, "handle-volume-inuse-error"), "false")

    def test_replicated_sidecars_elect_a_leader(self):
        for rendered in self.each():
            deployment = rendered.one("Deployment", "swell-controller")
            self.assertEqual(deployment["spec"]["replicas"], 2)
            spec = deployment["spec"]["template"]["spec"]
            for name in ("csi-provisioner", "csi-resizer", "csi-snapshotter"):
                self.assertIs(flag(sidecar(spec, name), "leader-election"), True, name)
            # Each replica holds RBD volume locks under its own name, $POD_NAME.
            env = {e["name"]: e for e in swell_container(spec)["env"]}
            self.assertEqual(env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name")

    def test_the_node_plugin_is_privileged_and_propagates_mounts(self):
        for rendered in self.each():
            spec = rendered.one("DaemonSet", "swell-node")["spec"]["template"]["spec"]
            node = swell_container(spec)
            self.assertIs(node["securityContext"]["privileged"], True)
            volumes = {v["name"]: v for v in spec["volumes"]}
            for host_path, propagation in (("/var/lib/kubelet", "Bidirectional"), ("/dev", None), ("/sys", None)):
                with self.subTest(path=host_path):
                    name, inside = locate(node, host_path)
                    self.assertEqual(inside, ".")
                    self.assertEqual(volumes[name]["hostPath"]["path"], host_path)
                    mount = [m for m in node["volumeMounts"] if m["name"] == name][0]
                    if propagation:
                        self.assertEqual(mount.get("mountPropagation"), propagation)

    def test_every_sidecar_talks_to_the_driver_socket(self):
        for rendered in self.each():
            self.assertEqual(len(rendered.csi_pod_specs()), 2, "the controller and the node serve CSI on --endpoint")
            for pod, spec in rendered.csi_pod_specs():
                socket = driver_socket(spec)
                sidecars = [c for c in spec["containers"] if flag(c, "csi-address") is not None]
                self.assertTrue(sidecars, f"{pod}: no sidecar with --csi-address")
                for c in sidecars:
                    with self.subTest(pod=pod, container=c["name"]):
                        self.assertEqual(locate(c, flag(c, "csi-address")), socket)

    def test_liveness_probes_reach_the_probe_sidecar(self):
        for rendered in self.each():
            self.assertEqual(len(rendered.csi_pod_specs()), 2, "the controller and the node serve CSI on --endpoint")
            for pod, spec in rendered.csi_pod_specs():
                with self.subTest(pod=pod):
                    driver = swell_container(spec)
                    probe = sidecar(spec, "livenessprobe")
                    self.assertEqual(locate(probe, flag(probe, "csi-address")), driver_socket(spec))
                    http = driver["livenessProbe"]["httpGet"]
                    self.assertEqual(http["path"], "/healthz")
                    port = http["port"]
                    if isinstance(port, str):
                        port = [p["containerPort"] for p in driver["ports"] if p["name"] == port][0]
                    self.assertEqual(flag(probe, "http-endpoint"), f":{port}")
                    self.assertGreater(driver["livenessProbe"]["timeoutSeconds"], seconds(flag(probe, "probe-timeout")))

    def test_readiness_is_swells_own_health_check_where_it_serves_it(self):
        for rendered in self.each():
            workloads = [o for o in rendered.objects if o["kind"] in ("Deployment", "DaemonSet")]
            serving = [o for o in workloads if flag(swell_container(o["spec"]["template"]["spec"]), "endpoint") is not None]
            # The webhook serves HTTPS, not CSI; the controller and the node serve CSI.
            self.assertEqual(len(serving), 2, "the controller and the node serve CSI on --endpoint")
            for obj in serving:
                template = obj["spec"]["template"]
                driver = swell_container(template["spec"])
                with self.subTest(pod=obj["metadata"]["name"]):
                    address = flag(driver, "metrics-address")
                    self.assertIsInstance(address, str, "the Swell container serves no /metrics and /healthz")
                    http = driver["readinessProbe"]["httpGet"]
                    self.assertEqual(http["path"], "/healthz")
                    port = [p["containerPort"] for p in driver["ports"] if p["name"] == http["port"]][0]
                    self.assertEqual(address.rsplit(":", 1)[1], str(port))
                    # The pod's own address, not every interface (issue: /healthz on 0.0.0.0).
                    self.assertEqual(address.rsplit(":", 1)[0], "$(POD_IP)")
                    pod_ip = [e for e in driver["env"] if e["name"] == "POD_IP"]
                    self.assertTrue(pod_ip, "no POD_IP in the environment")
                    self.assertEqual(pod_ip[0]["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP")
                    # Above the 10 s Swell gives the check (endpoint/src/observe.rs).
                    self.assertGreater(driver["readinessProbe"]["timeoutSeconds"], 10)
                    self.assertEqual(template["metadata"]["annotations"]["prometheus.io/port"], str(port))

    def test_the_registrar_registers_the_socket_kubelet_sees(self):
        for rendered in self.each():
            spec = rendered.one("DaemonSet", "swell-node")["spec"]["template"]["spec"]
            volume, inside = driver_socket(spec)
            host_dir = [v for v in spec["volumes"] if v["name"] == volume][0]["hostPath"]["path"]
            registrar = sidecar(spec, "csi-node-driver-registrar")
            self.assertEqual(flag(registrar, "kubelet-registration-path"), os.path.join(host_dir, inside))
            self.assertIn(rendered.driver_name(), host_dir)
            self.assertEqual(locate(registrar, "/registration")[0], "registration-dir")

    def test_one_swell_image_tag_everywhere_and_pinned_sidecars(self):
        for rendered in self.each_with_webhook():
            for pod, spec in rendered.pod_specs():
                for c in spec["containers"]:
                    repo, tag = image_repo_tag(c["image"])
                    with self.subTest(pod=pod, container=c["name"]):
                        if repo == "swell":
                            self.assertEqual(tag, self.version, "the Swell image tag is the workspace version")
                        else:
                            self.assertRegex(tag, SIDECAR_TAG)

    def test_swell_flags_and_variables_exist_in_the_binaries(self):
        for rendered in self.each_with_webhook():
            config = {cm["metadata"]["name"]: cm["data"] for cm in rendered.of_kind("ConfigMap")}
            for pod, spec in rendered.pod_specs():
                c = swell_container(spec)
                text = self.help[c["command"][0]]
                with self.subTest(pod=pod):
                    self.assertTrue(c.get("args"), f"{pod}: the Swell container has no args to check")
                    for arg in c.get("args", []):
                        # A whole flag: followed by its value's name, or by the
                        # end of its line (a switch such as --auto-grow).
                        self.assertRegex(text, re.escape(arg.split("=", 1)[0]) + r"[ \n]")
                    for name in [e["name"] for e in c.get("env", [])]:
                        if name.startswith("SWELL_"):
                            self.assertIn(f"[env: {name}=", text)
                    # A shared ConfigMap may hold what only one of the binaries reads.
                    for name in [k for ref in c.get("envFrom", []) for k in config[ref["configMapRef"]["name"]]]:
                        self.assertTrue(any(f"[env: {name}=" in t for t in self.help.values()), name)

    def test_rbd_reaches_both_binaries_from_one_config_each_as_its_own_user(self):
        rendered = self.rendered["rbd"]
        config = rendered.one("ConfigMap", "swell-rbd")["data"]
        self.assertNotIn("SWELL_RBD_USER", config, "one cephx user shared by every component")
        for kind, name in (("Deployment", "swell-controller"), ("DaemonSet", "swell-node")):
            with self.subTest(workload=name):
                spec = rendered.one(kind, name)["spec"]["template"]["spec"]
                c = swell_container(spec)
                self.assertEqual(c.get("envFrom"), [{"configMapRef": {"name": "swell-rbd"}}])
                user = [e["value"] for e in c.get("env", []) if e["name"] == "SWELL_RBD_USER"]
                self.assertEqual(user, [name], "the component's own cephx user")
                secret = rendered.one("Secret", f"swell-ceph-{name.removeprefix('swell-')}")
                self.assertEqual(set(secret["stringData"]), {"ceph.conf", "keyring"})
                self.assertIn(f"[client.{name}]", secret["stringData"]["keyring"])
                volumes = {v["name"]: v for v in spec["volumes"]}
                for key, file in (("SWELL_RBD_CEPH_CONF", "ceph.conf"), ("SWELL_RBD_KEYRING", "keyring")):
                    volume, inside = locate(c, config[key])
                    self.assertEqual(volumes[volume]["secret"]["secretName"], secret["metadata"]["name"])
                    self.assertEqual(inside, file)
                # What the node reads names the cluster: both must read it from here.
                for variable in re.findall(r"\[env: (SWELL_RBD_[A-Z_]+)=", self.help["swell-node"]):
                    if variable != "SWELL_RBD_USER":
                        self.assertIn(variable, config)

    def test_each_ceph_user_has_the_caps_its_component_needs(self):
        with open(os.path.join(ROOT, "deploy", "README.md")) as f:
            readme = f.read()
        commands = dict(re.findall(r"^    ceph auth get-or-create client\.(swell-[a-z]+) (.*)$", readme, re.M))
        writer = "mon 'profile rbd' osd 'profile rbd pool=<pool>'"
        self.assertEqual(commands, {
            "swell-controller": writer,
            "swell-node": writer,
            "swell-webhook": "mon 'profile rbd' osd 'profile rbd-read-only pool=<pool>'",
        })
        rendered = self.rendered["rbd"]
        for user in commands:
            secret = rendered.one("Secret", f"swell-ceph-{user.removeprefix('swell-')}")
            self.assertIn(f"[client.{user}]", secret["stringData"]["keyring"])

    def test_the_local_overlay_configures_no_ceph(self):
        rendered = self.rendered["local"]
        self.assertFalse(rendered.of_kind("Secret") + rendered.of_kind("ConfigMap"))

    def test_objects_live_in_one_namespace_and_accounts_exist(self):
        for rendered in self.each_with_webhook():
            accounts = {o["metadata"]["name"] for o in rendered.of_kind("ServiceAccount")}
            self.assertTrue(rendered.pod_specs(), "no workloads")
            for obj in rendered.objects:
                if obj["kind"] not in CLUSTER_SCOPED:
                    self.assertEqual(obj["metadata"].get("namespace"), NAMESPACE, f"{obj['kind']} {obj['metadata']['name']}")
            for _, spec in rendered.pod_specs():
                self.assertIn(spec["serviceAccountName"], accounts)
            for binding in rendered.of_kind("ClusterRoleBinding") + rendered.of_kind("RoleBinding"):
                for subject in binding["subjects"]:
                    self.assertEqual((subject["kind"], subject["namespace"]), ("ServiceAccount", NAMESPACE))
                    self.assertIn(subject["name"], accounts)

    def test_the_node_has_no_api_access(self):
        for rendered in self.each():
            bound = {s["name"] for b in rendered.of_kind("ClusterRoleBinding") + rendered.of_kind("RoleBinding") for s in b["subjects"]}
            self.assertIn("swell-controller", bound, "no binding to check against")
            self.assertNotIn("swell-node", bound)
            spec = rendered.one("DaemonSet", "swell-node")["spec"]["template"]["spec"]
            self.assertIs(spec["automountServiceAccountToken"], False)

    def test_every_container_but_the_node_plugin_runs_confined(self):
        for rendered in self.each_with_webhook():
            for name, spec in rendered.pod_specs():
                with self.subTest(pod=name):
                    self.assertEqual(spec.get("securityContext", {}).get("seccompProfile", {}).get("type"), "RuntimeDefault")
                    for c in spec["containers"]:
                        context = c.get("securityContext", {})
                        if c.get("command", [""])[0] == "swell-node":
                            # The one privileged container (test_the_node_plugin_is_privileged_and_propagates_mounts).
                            continue
                        with self.subTest(container=c["name"]):
                            self.assertFalse(context.get("privileged", False), "privileged")
                            self.assertIs(context.get("allowPrivilegeEscalation"), False)
                            self.assertIs(context.get("readOnlyRootFilesystem"), True)
                            self.assertEqual(context.get("capabilities", {}).get("drop"), ["ALL"])
                            self.assertNotIn("add", context.get("capabilities", {}))

    def test_the_controllers_sidecars_run_as_non_root_in_the_sockets_group(self):
        for rendered in self.each():
            spec = rendered.one("Deployment", "swell-controller")["spec"]["template"]["spec"]
            group = flag(swell_container(spec), "socket-group")
            self.assertIsNotNone(group, "swell-controller gives its socket to no group")
            # swell-controller runs without CAP_CHOWN: only a member may give its socket to the group.
            self.assertIn(int(group), spec.get("securityContext", {}).get("supplementalGroups", []))
            for c in spec["containers"]:
                if c is swell_container(spec):
                    continue
                with self.subTest(container=c["name"]):
                    context = c.get("securityContext", {})
                    self.assertIs(context.get("runAsNonRoot"), True)
                    self.assertNotIn(context.get("runAsUser"), (None, 0), "a sidecar without a non-root uid")

    def test_the_namespace_admits_the_privileged_node_plugin_explicitly(self):
        for rendered in self.each():
            (namespace,) = rendered.of_kind("Namespace")
            self.assertEqual(namespace["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce"), "privileged")

    def test_every_pod_takes_ingress_only_on_the_ports_it_serves(self):
        for rendered in self.each_with_webhook():
            policies = rendered.of_kind("NetworkPolicy")
            for obj in rendered.objects:
                if obj["kind"] not in ("Deployment", "DaemonSet"):
                    continue
                template = obj["spec"]["template"]
                labels = template["metadata"]["labels"]
                with self.subTest(pod=obj["metadata"]["name"]):
                    selecting = [
                        p["spec"] for p in policies
                        if p["spec"]["podSelector"].get("matchLabels") and p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()]
                    self.assertEqual(len(selecting), 1, "one NetworkPolicy selects the pod")
                    (policy,) = selecting
                    self.assertEqual(policy["policyTypes"], ["Ingress"])
                    # A rule without ports admits every port.
                    self.assertTrue(all(rule.get("ports") for rule in policy["ingress"]), "a rule admits every port")
                    allowed = {(p["protocol"], p["port"]) for rule in policy["ingress"] for p in rule["ports"]}
                    served = {("TCP", p["containerPort"]) for c in template["spec"]["containers"] for p in c.get("ports", [])}
                    self.assertEqual(allowed, served)

    def test_the_webhook_mounts_everything_read_only(self):
        (spec,) = [spec for _, spec in self.webhook.pod_specs()]
        mounts = [m for c in spec["containers"] for m in c.get("volumeMounts", [])]
        self.assertTrue(mounts, "the webhook mounts nothing")
        for mount in mounts:
            self.assertIs(mount.get("readOnly"), True, mount["mountPath"])


def _workload(manifests, overlay, kind, name):
    return manifests.rendered[overlay].one(kind, name)["spec"]["template"]["spec"]


def _set_arg(container, name, value):
    """Sets --name=value, or drops --name when value is None."""
    args = [a for a in container["args"] if a != f"--{name}" and not a.startswith(f"--{name}=")]
    container["args"] = args + ([] if value is None else [f"--{name}={value}" if value is not True else f"--{name}"])


def _move_endpoint_to_env(m):
    for overlay in m.rendered:
        for _, spec in m.rendered[overlay].pod_specs():
            c = swell_container(spec)
            endpoint = flag(c, "endpoint")
            if isinstance(endpoint, str):
                _set_arg(c, "endpoint", None)
                c.setdefault("env", []).append({"name": "CSI_ENDPOINT", "value": endpoint})


def _storage_class(m):
    m.rendered["rbd"].of_kind("StorageClass")[0]["allowVolumeExpansion"] = False


def _snapshot_class(m):
    m.rendered["local"].of_kind("VolumeSnapshotClass")[0]["parameters"] = {"x": "y"}


def _rbac(m):
    role = m.rendered["rbd"].one("ClusterRole", "swell-controller")
    role["rules"] = [r for r in role["rules"] if "persistentvolumeclaims/status" not in r["resources"]]


def _attacher(m):
    m.rendered["local"].of_kind("CSIDriver")[0]["spec"]["attachRequired"] = True


def _resizer_timeout(m):
    _set_arg(sidecar(_workload(m, "rbd", "Deployment", "swell-controller"), "csi-resizer"), "timeout", "5s")


def _leader_election(m):
    _set_arg(sidecar(_workload(m, "local", "Deployment", "swell-controller"), "csi-resizer"), "leader-election", None)


def _privileged(m):
    swell_container(_workload(m, "rbd", "DaemonSet", "swell-node"))["securityContext"]["privileged"] = False


def _sidecar_socket(m):
    _set_arg(sidecar(_workload(m, "local", "Deployment", "swell-controller"), "csi-provisioner"), "csi-address", "/elsewhere/csi.sock")


def _liveness(m):
    swell_container(_workload(m, "local", "DaemonSet", "swell-node"))["livenessProbe"]["httpGet"]["path"] = "/live"


def _readiness(m):
    swell_container(_workload(m, "rbd", "Deployment", "swell-controller"))["readinessProbe"]["timeoutSeconds"] = 5


def _registrar(m):
    _set_arg(sidecar(_workload(m, "rbd", "DaemonSet", "swell-node"), "csi-node-driver-registrar"), "kubelet-registration-path", "/var/lib/kubelet/plugins/other/csi.sock")


def _image_tag(m):
    c = swell_container(_workload(m, "local", "Deployment", "swell-controller"))
    c["image"] = "swell:latest"


def _unknown_flag(m):
    swell_container(_workload(m, "local", "Deployment", "swell-controller"))["args"].append("--no-such-flag=1")


def _rbd_secret(m):
    del m.rendered["rbd"].one("Secret", "swell-ceph-node")["stringData"]["keyring"]


def _shared_user(m):
    node = swell_container(_workload(m, "rbd", "DaemonSet", "swell-node"))
    node["env"] = [e for e in node["env"] if e["name"] != "SWELL_RBD_USER"] + [{"name": "SWELL_RBD_USER", "value": "swell-controller"}]


def _webhook_keyring(m):
    secret = m.rendered["rbd"].one("Secret", "swell-ceph-webhook")
    secret["stringData"]["keyring"] = secret["stringData"]["keyring"].replace("client.swell-webhook", "client.swell-controller")


def _local_ceph(m):
    m.rendered["local"].objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "swell-rbd", "namespace": NAMESPACE}, "data": {}})


def _namespace(m):
    m.rendered["local"].of_kind("ServiceAccount")[0]["metadata"]["namespace"] = "default"


def _node_api(m):
    binding = m.rendered["rbd"].of_kind("ClusterRoleBinding")[0]
    binding["subjects"].append({"kind": "ServiceAccount", "name": "swell-node", "namespace": NAMESPACE})


def _no_seccomp(m):
    del _workload(m, "local", "Deployment", "swell-controller")["securityContext"]["seccompProfile"]


def _writable_root(m):
    (spec,) = [spec for _, spec in m.webhook.pod_specs()]
    swell_container(spec)["securityContext"]["readOnlyRootFilesystem"] = False


def _capability_added(m):
    sidecar(_workload(m, "rbd", "Deployment", "swell-controller"), "csi-resizer")["securityContext"]["capabilities"]["add"] = ["SYS_ADMIN"]


def _sidecar_privileged(m):
    sidecar(_workload(m, "rbd", "DaemonSet", "swell-node"), "livenessprobe")["securityContext"]["privileged"] = True


def _escalation(m):
    del sidecar(_workload(m, "local", "DaemonSet", "swell-node"), "csi-node-driver-registrar")["securityContext"]["allowPrivilegeEscalation"]


def _sidecar_as_root(m):
    context = sidecar(_workload(m, "rbd", "Deployment", "swell-controller"), "csi-provisioner")["securityContext"]
    del context["runAsNonRoot"]
    context["runAsUser"] = 0


def _socket_for_root_alone(m):
    _set_arg(swell_container(_workload(m, "local", "Deployment", "swell-controller")), "socket-group", None)


def _not_in_the_socket_group(m):
    del _workload(m, "local", "Deployment", "swell-controller")["securityContext"]["supplementalGroups"]


def _pod_security(m):
    del m.rendered["rbd"].of_kind("Namespace")[0]["metadata"]["labels"]


def _policy_gone(m):
    m.rendered["local"].objects.remove(m.rendered["local"].one("NetworkPolicy", "swell-controller"))


def _policy_opens_a_port(m):
    m.rendered["rbd"].one("NetworkPolicy", "swell-node")["spec"]["ingress"][0]["ports"].append({"protocol": "TCP", "port": 22})


def _rule_without_ports(m):
    m.webhook.one("NetworkPolicy", "swell-webhook")["spec"]["ingress"].append({})


def _webhook_writes(m):
    (spec,) = [spec for _, spec in m.webhook.pod_specs()]
    del swell_container(spec)["volumeMounts"][-1]["readOnly"]


def _overlay_gone(m):
    del m.rendered["rbd"]


# Each Swell-specific check, and mutations of the rendered manifests that
# break what it checks: the check must fail on each.
NEGATIVE_CONTROLS = {
    "test_overlays_are_local_and_rbd": [_overlay_gone],
    "test_storage_classes_allow_expansion_and_name_the_driver": [_storage_class],
    "test_each_overlay_snapshots_through_the_driver": [_snapshot_class],
    "test_the_controller_may_do_what_its_sidecars_ask": [_rbac],
    "test_the_driver_needs_no_attacher": [_attacher],
    "test_the_resizer_runs_with_a_timeout_longer_than_the_backend_deadline": [_resizer_timeout],
    "test_replicated_sidecars_elect_a_leader": [_leader_election],
    "test_the_node_plugin_is_privileged_and_propagates_mounts": [_privileged],
    "test_every_sidecar_talks_to_the_driver_socket": [_sidecar_socket, _move_endpoint_to_env],
    "test_liveness_probes_reach_the_probe_sidecar": [_liveness, _move_endpoint_to_env],
    "test_readiness_is_swells_own_health_check_where_it_serves_it": [_readiness, _move_endpoint_to_env],
    "test_the_registrar_registers_the_socket_kubelet_sees": [_registrar],
    "test_one_swell_image_tag_everywhere_and_pinned_sidecars": [_image_tag],
    "test_swell_flags_and_variables_exist_in_the_binaries": [_unknown_flag],
    "test_rbd_reaches_both_binaries_from_one_config_each_as_its_own_user": [_rbd_secret, _shared_user],
    "test_each_ceph_user_has_the_caps_its_component_needs": [_webhook_keyring],
    "test_the_local_overlay_configures_no_ceph": [_local_ceph],
    "test_objects_live_in_one_namespace_and_accounts_exist": [_namespace],
    "test_the_node_has_no_api_access": [_node_api],
    "test_the_namespace_admits_the_privileged_node_plugin_explicitly": [_pod_security],
    "test_the_controllers_sidecars_run_as_non_root_in_the_sockets_group": [_sidecar_as_root, _socket_for_root_alone, _not_in_the_socket_group],
    "test_the_webhook_mounts_everything_read_only": [_webhook_writes],
    "test_every_pod_takes_ingress_only_on_the_ports_it_serves": [_policy_gone, _policy_opens_a_port, _rule_without_ports],
    "test_every_container_but_the_node_plugin_runs_confined": [_no_seccomp, _writable_root, _capability_added, _sidecar_privileged, _escalation],
}


class NegativeControls(unittest.TestCase):
    """Each check fails on manifests mutated to break what it checks."""

    def test_every_swell_check_has_a_negative_control(self):
        checks = {name for name in dir(Manifests) if name.startswith("test_")}
        # The schema checks are the schema library's (and tested as such above).
        checks -= {"test_every_object_validates_against_the_kubernetes_schema", "test_the_schema_check_rejects_a_misspelt_field"}
        self.assertEqual(checks, set(NEGATIVE_CONTROLS))

    def test_each_check_fails_on_its_mutated_manifests(self):
        if not Manifests.rendered:
            Manifests.setUpClass()
        # A check failing inside `each()` closes its generator mid-subTest;
        # Python reports that as ignored, which is noise here.
        hook, sys.unraisablehook = sys.unraisablehook, lambda _: None
        self.addCleanup(setattr, sys, "unraisablehook", hook)
        for check, mutations in NEGATIVE_CONTROLS.items():
            for mutate in mutations:
                with self.subTest(check=check, mutation=mutate.__name__):
                    case = Manifests(check)
                    case.rendered = copy.deepcopy(Manifests.rendered)
                    case.webhook = copy.deepcopy(Manifests.webhook)
                    mutate(case)
                    result = unittest.TestResult()
                    case.run(result)
                    self.assertFalse(result.wasSuccessful(), f"{check} passed on manifests {mutate.__name__} broke")
                    # The unmutated manifests pass the same check.
                    clean = unittest.TestResult()
                    Manifests(check).run(clean)
                    self.assertTrue(clean.wasSuccessful(), f"{check} fails on the real manifests: {clean.failures + clean.errors}")


class Helpers(unittest.TestCase):
    def test_durations(self):
        self.assertEqual(seconds("30s"), 30)
        self.assertEqual(seconds("1m30s"), 90)
        self.assertEqual(seconds("500ms"), 0.5)
        for bad in ("30", "s", "30 s", "1x"):
            with self.assertRaises(ValueError):
                seconds(bad)

    def test_locate_takes_the_deepest_mount(self):
        c = {"name": "c", "volumeMounts": [{"name": "a", "mountPath": "/var/lib"}, {"name": "b", "mountPath": "/var/lib/kubelet"}]}
        self.assertEqual(locate(c, "/var/lib/kubelet/x.sock"), ("b", "x.sock"))
        self.assertEqual(locate(c, "/var/lib/kubeletx"), ("a", "kubeletx"))
        with self.assertRaises(AssertionError):
            locate(c, "/csi/csi.sock")


class Reporting(unittest.TextTestResult):
    """Also reports each check by name into e2e/test.sh's closing line
    (e2e/results.sh: a "name<TAB>result<TAB>why" line in $SWELL_RESULTS)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.outcomes = {}

    def _note(self, test, result, why=""):
        # A class's failed setUpClass comes as an _ErrorHolder, which has an id too.
        name = "check_manifests::" + test.id().replace("__main__.", "")
        if self.outcomes.get(name, ("ok",))[0] != "FAILED":
            self.outcomes[name] = (result, why)

    def addSuccess(self, test):
        super().addSuccess(test)
        self._note(test, "ok")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._note(test, "FAILED", str(err[1]).splitlines()[0] if str(err[1]) else err[0].__name__)

    def addError(self, test, err):
        super().addError(test, err)
        self._note(test, "FAILED", f"{err[0].__name__}: {err[1]}".splitlines()[0])

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            self._note(test, "FAILED", f"{subtest._subDescription()}: {err[1]}".splitlines()[0])

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._note(test, "skipped", reason)

    def stopTestRun(self):
        super().stopTestRun()
        if path := os.environ.get("SWELL_RESULTS"):
            with open(path, "a", encoding="utf-8") as out:
                for name, (result, why) in sorted(self.outcomes.items()):
                    out.write(f"{name}\t{result}\t{why.replace(chr(9), ' ')}\n")


if __name__ == "__main__":
    runner = unittest.TextTestRunner(resultclass=Reporting, verbosity=1)
    result = unittest.main(exit=False, testRunner=runner).result
    failed = len(result.failures) + len(result.errors)
    print(f"manifests: {result.testsRun - failed} passed, {failed} failed")
    sys.exit(1 if failed or not result.wasSuccessful() else 0)
