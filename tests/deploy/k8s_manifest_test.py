#!/usr/bin/python3
"""Checks the deployment files against the daemon they deploy.

Usage: k8s_manifest_test.py --binary build/server/quantserve [--src REPO_ROOT]

Runs `quantserve --helpfull` for the real flag names and defaults, then checks:
  deploy/k8s     every document parses; the Deployment's gRPC probes use the daemon's
                 gRPC port and a service name its health service knows; every container
                 arg is a flag of the binary; terminationGracePeriodSeconds exceeds the
                 preStop sleep plus --exit-timeout-secs; cpu requests/limits are set; the
                 Services, HPA, PDB and adapter rule point at the right objects, ports and
                 metric; `kubectl kustomize` renders the kustomization when kubectl exists.
  docker/        the Dockerfile's ENTRYPOINT/HEALTHCHECK flags exist, its USER matches the
                 pods' runAsUser; compose.yaml's mounts exist; docker/prometheus/prometheus.yml
                 is config/prometheus/prometheus.yml but for its target (and `promtool check
                 config` accepts it when promtool exists); the Grafana provisioning matches
                 the dashboard.
Needs python3-yaml (test profile of scripts/install-deps).
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

try:
    import yaml
except ImportError:  # pragma: no cover
    print("k8s_manifest_test: python3-yaml is missing (scripts/install-deps test)")
    sys.exit(1)

ARGS = None
HELP = {}  # flag name (underscores) -> default as printed by --helpfull


def norm_flag(arg):
    """'--exit-timeout-secs=30' -> ('exit_timeout_secs', '30'); None for non-flags."""
    if not arg.startswith("-"):
        return None
    name, _, value = arg.lstrip("-").partition("=")
    return name.replace("-", "_"), value


def load_help(binary):
    out = subprocess.run([binary, "--helpfull"], capture_output=True, text=True, timeout=60)
    text = out.stdout + out.stderr
    flags = {}
    # "--grpc_port (gRPC port ...); default: 8001;" -- descriptions wrap over lines.
    for m in re.finditer(r"--(\w+) \((.*?)\);\s+default: (.*?);", text, re.S):
        flags[m.group(1)] = m.group(3).strip().strip('"')
    return flags


def src(*parts):
    return os.path.join(ARGS.src, *parts)


def yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def k8s_objects():
    objs = []
    k8s = src("deploy", "k8s")
    for name in sorted(os.listdir(k8s)):
        if name.endswith((".yaml", ".yml")) and name != "kustomization.yaml":
            for d in yaml_docs(os.path.join(k8s, name)):
                objs.append((name, d))
    return objs


def one(kind, name=None):
    found = [d for _, d in k8s_objects()
             if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"want one {kind} {name or ''}, found {len(found)}"
    return found[0]


def daemon_container():
    dep = one("Deployment", "quantserve")
    cs = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "quantserve"]
    assert len(cs) == 1
    return dep, cs[0]


def container_flags(container):
    flags = {}
    for a in container.get("args", []):
        f = norm_flag(a)
        assert f is not None, f"positional argument {a!r}: quantserve takes flags only"
        flags[f[0]] = f[1]
    return flags


def cpu_quantity(q):
    q = str(q)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def dockerfile_runtime():
    """The runtime stage's instructions as (keyword, rest) pairs."""
    lines, cur = [], ""
    with open(src("docker", "Dockerfile")) as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not cur and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if line.endswith("\\"):
                cur += line[:-1] + " "
                continue
            cur += line
            lines.append(cur.strip())
            cur = ""
    stages, stage = {}, None
    for line in lines:
        kw, _, rest = line.partition(" ")
        if kw.upper() == "FROM":
            stage = rest.split()[-1] if " AS " in rest.upper() else rest
            stages[stage] = []
        elif stage is not None:
            stages[stage].append((kw.upper(), rest.strip()))
    return stages


class K8sManifestTest(unittest.TestCase):
    def test_every_document_parses_and_is_named(self):
        objs = k8s_objects()
        self.assertGreaterEqual(len(objs), 6)
        for fname, d in objs:
            for key in ("apiVersion", "kind", "metadata"):
                self.assertIn(key, d, fname)
            self.assertTrue(d["metadata"].get("name"), fname)

    def test_kustomization_lists_the_manifests(self):
        kust = yaml_docs(src("deploy", "k8s", "kustomization.yaml"))[0]
        listed = set(kust["resources"])
        for r in listed:
            self.assertTrue(os.path.isfile(src("deploy", "k8s", r)), r)
        files = {f for f in os.listdir(src("deploy", "k8s"))
                 if f.endswith(".yaml") and f != "kustomization.yaml"}
        # The adapter rule belongs to the adapter's namespace and release.
        self.assertEqual(files - listed, {"prometheus-adapter-rules.yaml"})

    def test_args_are_flags_of_the_binary(self):
        _, c = daemon_container()
        self.assertFalse(c.get("command"), "keep the image's ENTRYPOINT (--model-repository)")
        for name in container_flags(c):
            self.assertIn(name, HELP, f"--{name} is not a quantserve flag")

    def test_grpc_probes_use_the_daemon_grpc_port(self):
        _, c = daemon_container()
        port = int(container_flags(c).get("grpc_port") or HELP["grpc_port"])
        self.assertEqual(port, int(HELP["grpc_port"]), "manifests assume the default port")
        with open(src("server", "grpc", "health_service.cc")) as f:
            known = {""} | set(re.findall(r'service != "([^"]+)"', f.read()))
        self.assertIn("inference.GRPCInferenceService", known)
        for probe in ("livenessProbe", "readinessProbe"):
            p = c[probe]
            self.assertIn("grpc", p, f"{probe} should be a native gRPC probe")
            self.assertEqual(p["grpc"]["port"], port, probe)
            self.assertIn(p["grpc"].get("service", ""), known, probe)
        self.assertEqual(c["readinessProbe"]["grpc"].get("service"),
                         "inference.GRPCInferenceService")
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        self.assertEqual(ports["grpc"], port)
        mport = int(container_flags(c).get("metrics_port") or HELP["metrics_port"])
        self.assertEqual(ports["metrics"], mport)
        dep, _ = daemon_container()
        ann = dep["spec"]["template"]["metadata"].get("annotations", {})
        self.assertEqual(int(ann["prometheus.io/port"]), mport)

    def test_grace_period_covers_prestop_and_exit_timeout(self):
        dep, c = daemon_container()
        exit_timeout = int(container_flags(c).get("exit_timeout_secs")
                           or HELP["exit_timeout_secs"])
        pre = c.get("lifecycle", {}).get("preStop", {})
        sleep = 0
        if "exec" in pre:
            cmd = pre["exec"]["command"]
            if os.path.basename(cmd[0]) == "sleep":
                sleep = int(cmd[1])
        elif "sleep" in pre:
            sleep = int(pre["sleep"]["seconds"])
        grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        self.assertGreater(grace, exit_timeout, "SIGKILL would cut the drain short")
        self.assertGreater(grace, sleep + exit_timeout + 1)
        # The preStop command must exist in the image: /bin/sleep (coreutils) does.
        if "exec" in pre:
            self.assertEqual(pre["exec"]["command"][0], "/bin/sleep")

    def test_cpu_resources_set(self):
        _, c = daemon_container()
        res = c["resources"]
        self.assertIn("cpu", res["limits"], "the cpu limit sets the OpenMP thread count")
        self.assertIn("cpu", res["requests"])
        self.assertIn("memory", res["limits"])
        lim = cpu_quantity(res["limits"]["cpu"])
        self.assertGreaterEqual(lim, 1)
        self.assertEqual(lim, int(lim), "whole CPUs: quantserve rounds the quota up")
        env = {e["name"] for e in c.get("env", [])}
        self.assertNotIn("OMP_NUM_THREADS", env, "the daemon follows the cgroup quota")
        self.assertNotIn("OMP_WAIT_POLICY", env)

    def test_security_context_matches_the_image_user(self):
        dep, c = daemon_container()
        stages = dockerfile_runtime()
        user = [rest for kw, rest in stages["runtime"] if kw == "USER"][-1]
        uid = int(user.split(":")[0])
        pod = dep["spec"]["template"]["spec"]["securityContext"]
        self.assertTrue(pod["runAsNonRoot"])
        self.assertEqual(pod["runAsUser"], uid)
        self.assertTrue(c["securityContext"]["readOnlyRootFilesystem"])
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        self.assertIn("/models", mounts)
        self.assertTrue(mounts["/models"].get("readOnly"))

    def test_services_hpa_pdb_point_at_the_deployment(self):
        dep, c = daemon_container()
        labels = dep["spec"]["template"]["metadata"]["labels"]
        self.assertEqual(dep["spec"]["selector"]["matchLabels"].items() - labels.items(), set())
        port_names = {p["name"] for p in c["ports"]}
        services = [d for _, d in k8s_objects() if d["kind"] == "Service"]
        self.assertTrue(any(s["spec"].get("clusterIP") == "None" for s in services),
                        "a headless Service for client-side gRPC balancing")
        for s in services:
            self.assertEqual(s["spec"]["selector"].items() - labels.items(), set())
            for p in s["spec"]["ports"]:
                self.assertIn(p["targetPort"], port_names)
        main = one("Service", "quantserve")
        self.assertEqual({p["name"]: p["port"] for p in main["spec"]["ports"]},
                         {"grpc": int(HELP["grpc_port"]), "metrics": int(HELP["metrics_port"])})
        pdb = one("PodDisruptionBudget")
        self.assertEqual(pdb["spec"]["selector"]["matchLabels"].items() - labels.items(), set())
        hpa = one("HorizontalPodAutoscaler")
        self.assertEqual(hpa["apiVersion"], "autoscaling/v2")
        ref = hpa["spec"]["scaleTargetRef"]
        self.assertEqual((ref["kind"], ref["name"]), ("Deployment", dep["metadata"]["name"]))
        self.assertGreaterEqual(hpa["spec"]["minReplicas"], 2)
        metrics = [m for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
        self.assertEqual(len(metrics), 1)
        name = metrics[0]["pods"]["metric"]["name"]
        self.assertEqual(name, "quantserve_pending_requests")
        # The adapter rule serves that name, from the series the daemon exports.
        cm = one("ConfigMap")
        rules = yaml.safe_load(cm["data"]["config.yaml"])["rules"]
        self.assertTrue(any(r["name"]["as"] == name and name in r["seriesQuery"]
                            and "pod" in r["resources"]["overrides"] for r in rules))
        with open(src("config", "prometheus", "alerts.yml")) as f:
            self.assertIn(name, f.read(), "the metric the alerts use too")

    def test_kubectl_kustomize_renders(self):
        kubectl = shutil.which("kubectl")
        if not kubectl:
            self.skipTest("kubectl not installed")
        out = subprocess.run([kubectl, "kustomize", src("deploy", "k8s")],
                             capture_output=True, text=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        kinds = sorted(d["kind"] for d in yaml.safe_load_all(out.stdout) if d)
        self.assertEqual(kinds, sorted(["PersistentVolumeClaim", "Deployment", "Service",
                                        "Service", "HorizontalPodAutoscaler",
                                        "PodDisruptionBudget"]))


class DockerFilesTest(unittest.TestCase):
    def test_dockerfile_runtime_stage(self):
        stages = dockerfile_runtime()
        self.assertIn("build", stages)
        rt = dict((kw, rest) for kw, rest in stages["runtime"])
        entry = json.loads(rt["ENTRYPOINT"])
        self.assertEqual(entry[0], "/usr/local/bin/quantserve")
        self.assertIn("--model-repository=/models", entry)
        for a in entry[1:]:
            self.assertIn(norm_flag(a)[0], HELP, a)
        hc = rt["HEALTHCHECK"]
        cmd = json.loads(hc[hc.index("CMD") + 3:].strip())
        self.assertEqual(norm_flag(cmd[1])[0], "probe")
        self.assertIn("probe", HELP)
        self.assertEqual(cmd[1].split(":")[-1], HELP["grpc_port"])
        self.assertEqual(set(rt["EXPOSE"].split()), {HELP["grpc_port"], HELP["metrics_port"]})
        self.assertEqual(rt["VOLUME"], "/models")
        runs = " ".join(rest for kw, rest in stages["runtime"] if kw == "RUN")
        for dev in ("-dev", "g++", "gcc", "cmake", "python3"):
            self.assertNotIn(dev, runs, "the runtime stage installs no build tools")
        envs = " ".join(rest for kw, rest in stages["runtime"] if kw == "ENV")
        self.assertNotIn("OMP_NUM_THREADS", envs)

    def test_compose(self):
        compose = yaml_docs(src("docker", "compose.yaml"))[0]
        base = src("docker")
        svc = compose["services"]
        self.assertEqual(set(svc), {"quantserve", "prometheus", "grafana"})
        b = svc["quantserve"]["build"]
        self.assertTrue(os.path.isfile(os.path.join(base, b["context"], b["dockerfile"])))
        for a in svc["quantserve"].get("command", []):
            self.assertIn(norm_flag(a)[0], HELP, a)
        for name, s in svc.items():
            for v in s.get("volumes", []):
                host = v.split(":")[0]
                if host.startswith("."):
                    self.assertTrue(os.path.exists(os.path.join(base, host)), f"{name}: {host}")
        grace = int(svc["quantserve"]["stop_grace_period"].rstrip("s"))
        self.assertGreater(grace, int(HELP["exit_timeout_secs"]))

    def test_compose_prometheus_config_follows_config_dir(self):
        with open(src("config", "prometheus", "prometheus.yml")) as f:
            want = yaml.safe_load(f)
        with open(src("docker", "prometheus", "prometheus.yml")) as f:
            got = yaml.safe_load(f)
        for cfg in (want, got):
            for job in cfg["scrape_configs"]:
                for sc in job["static_configs"]:
                    sc["targets"] = ["TARGET"]
        self.assertEqual(got, want)
        with open(src("docker", "prometheus", "prometheus.yml")) as f:
            targets = yaml.safe_load(f)["scrape_configs"][0]["static_configs"][0]["targets"]
        self.assertEqual(targets, ["quantserve:" + HELP["metrics_port"]])
        promtool = shutil.which("promtool")
        if not promtool:
            return
        with tempfile.TemporaryDirectory() as d:
            shutil.copy(src("docker", "prometheus", "prometheus.yml"), d)
            shutil.copy(src("config", "prometheus", "alerts.yml"), d)
            out = subprocess.run([promtool, "check", "config",
                                  os.path.join(d, "prometheus.yml")],
                                 capture_output=True, text=True, timeout=60)
            self.assertEqual(out.returncode, 0, out.stdout + out.stderr)

    def test_grafana_provisioning(self):
        prov = src("docker", "grafana", "provisioning")
        ds = yaml_docs(os.path.join(prov, "datasources", "prometheus.yaml"))[0]["datasources"]
        self.assertEqual([d["type"] for d in ds], ["prometheus"])
        self.assertTrue(ds[0]["isDefault"])
        self.assertEqual(ds[0]["url"], "http://prometheus:9090")
        providers = yaml_docs(os.path.join(prov, "dashboards", "quantserve.yaml"))[0]["providers"]
        path = providers[0]["options"]["path"]
        compose = yaml_docs(src("docker", "compose.yaml"))[0]
        mounts = [v.split(":")[1] for v in compose["services"]["grafana"]["volumes"]]
        self.assertTrue(any(os.path.dirname(m) == path and m.endswith(".json")
                            for m in mounts), "the dashboard is mounted where provisioning looks")
        with open(src("config", "grafana", "quantserve-dashboard.json")) as f:
            dash = json.load(f)
        var = [v for v in dash["templating"]["list"] if v["name"] == "datasource"]
        self.assertEqual(var[0]["query"], "prometheus")
        self.assertNotIn("__inputs", dash, "an exported-for-sharing dashboard needs import")


def main():
    global ARGS, HELP
    p = argparse.ArgumentParser()
    p.add_argument("--binary", required=True)
    p.add_argument("--src", default=os.path.dirname(os.path.dirname(
        os.path.dirname(os.path.abspath(__file__)))))
    ARGS, rest = p.parse_known_args()
    HELP = load_help(ARGS.binary)
    for needed in ("grpc_port", "metrics_port", "exit_timeout_secs", "model_repository"):
        if needed not in HELP:
            print(f"k8s_manifest_test: --helpfull of {ARGS.binary} lacks --{needed}")
            sys.exit(1)
    print(f"k8s_manifest_test: {len(HELP)} flags from {ARGS.binary} --helpfull; "
          f"kubectl: {shutil.which('kubectl') or 'not installed'}; "
          f"promtool: {shutil.which('promtool') or 'not installed'}")
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)


if __name__ == "__main__":
    main()
