#!/usr/bin/python3
"""End-to-end wire-format test of quantserve from Python (grpcio + protobuf).

Proves that a client written in a second language, using stubs generated from
quantserve's own .proto files, can talk to the daemon over the KServe v2 /
Triton gRPC protocol (inference.GRPCInferenceService) and the standard
grpc.health.v1.Health service.

Usage:
  /usr/bin/python3 tests/integration/python_client_test.py \
      --binary build/server/quantserve --repo /tmp/pyrepo --protos protos

Defaults for the three flags come from the environment variables QS_BINARY,
QS_TEST_REPO and QS_PROTO_DIR.  The repository is the union of what
tools/make_example_models.py and tests/fixtures/make_bad_models.py write, plus
an empty folder named "bad..name":

  /usr/bin/python3 tools/make_example_models.py --out /tmp/pyrepo
  /usr/bin/python3 tests/fixtures/make_bad_models.py --out /tmp/pyrepo
  mkdir -p '/tmp/pyrepo/bad..name'

Needs Debian's python3-grpcio, python3-grpc-tools, python3-protobuf and
python3-numpy (hence /usr/bin/python3, not a pyenv/virtualenv python).

The script starts the daemon itself on an ephemeral port (--grpc-port 0,
metrics disabled), waits for its "server ready" log line, runs one unittest
TestCase against it, stops it with SIGTERM (asserting exit code 0) and ends
with the line "python_client: N passed, M failed".  The exit status is 0 only
when every test passed.
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import grpc
import numpy as np
import onnx
from onnx import numpy_helper

STARTUP_TIMEOUT_S = 120.0   # watchdog: daemon must log "server ready" by then
SHUTDOWN_TIMEOUT_S = 30.0   # SIGTERM -> exit
RPC_TIMEOUT_S = 30.0        # per RPC deadline, so a hung server cannot hang us

# Models the fixture scripts write, by expected state.
READY_MODELS = {"tiny", "digits_mlp", "digits_cnn", "ignored_fields",
                "digits_mlp_int8", "digits_mlp_dynamic", "digits_cnn_int8", "digits_cnn_bf16",
                "digits_mlp_fp16"}
BROKEN_MODELS = {"truncated", "bad_config", "missing_input"}

# tiny version 2: y = Relu(x @ W + b2), exact in FP32 (see make_bad_models.py).
TINY_X = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
TINY_Y_V2 = np.array([[0.0, 1.5, 11.25]], dtype=np.float32)

ARGS = None    # parsed command line
PB = None      # namespace holding the generated modules


# --------------------------------------------------------------------------
# stub generation
# --------------------------------------------------------------------------

def _grpc_tools_include_dir():
    """Directory holding the well-known .proto files bundled with grpc_tools."""
    try:
        import importlib.resources as resources
        path = resources.files("grpc_tools") / "_proto"
        if path.is_dir():
            return str(path)
    except (ImportError, AttributeError, TypeError):
        pass
    import pkg_resources
    return pkg_resources.resource_filename("grpc_tools", "_proto")


class _Modules:
    pass


def generate_stubs(proto_dir, out_dir):
    """Runs protoc in-process and imports the generated modules."""
    from grpc_tools import protoc

    names = ("grpc_service", "model_config", "health")
    files = [os.path.join(proto_dir, n + ".proto") for n in names]
    for f in files:
        if not os.path.isfile(f):
            raise FileNotFoundError(f"proto file not found: {f}")
    rc = protoc.main([
        "grpc_tools.protoc",
        f"--proto_path={proto_dir}",
        f"--proto_path={_grpc_tools_include_dir()}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *files,
    ])
    if rc != 0:
        raise RuntimeError(f"grpc_tools.protoc failed with exit code {rc}")
    sys.path.insert(0, out_dir)
    import grpc_service_pb2
    import grpc_service_pb2_grpc
    import health_pb2
    import health_pb2_grpc
    import model_config_pb2

    m = _Modules()
    m.service = grpc_service_pb2
    m.service_grpc = grpc_service_pb2_grpc
    m.health = health_pb2
    m.health_grpc = health_pb2_grpc
    m.config = model_config_pb2
    return m


# --------------------------------------------------------------------------
# the daemon
# --------------------------------------------------------------------------

class Daemon:
    """quantserve as a child process with its stderr captured."""

    LISTEN_RE = re.compile(r"gRPC listening on 127\.0\.0\.1:(\d+)")

    def __init__(self, binary, repo):
        self.cmd = [binary, "--model-repository", repo,
                    "--grpc-address", "127.0.0.1", "--grpc-port", "0",
                    "--metrics-port", "-1"]
        self.proc = None
        self.port = None
        self._lines = []
        self._lock = threading.Lock()
        self._drainer = None
        self._watchdog_fired = threading.Event()

    def log_text(self):
        with self._lock:
            return "".join(self._lines)

    def _append(self, raw):
        line = raw.decode("utf-8", errors="replace")
        with self._lock:
            self._lines.append(line)
        return line

    def start(self):
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)

        def kill_on_timeout():
            self._watchdog_fired.set()
            if self.proc.poll() is None:
                self.proc.kill()

        watchdog = threading.Timer(STARTUP_TIMEOUT_S, kill_on_timeout)
        watchdog.daemon = True
        watchdog.start()
        ready = False
        try:
            while True:
                raw = self.proc.stderr.readline()
                if not raw:  # EOF: the process exited (or was killed)
                    break
                line = self._append(raw)
                m = self.LISTEN_RE.search(line)
                if m and self.port is None:
                    self.port = int(m.group(1))
                if line.rstrip().endswith("server ready"):
                    ready = True
                    break
        finally:
            watchdog.cancel()

        if not ready:
            try:
                rc = self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
            why = (f"watchdog killed it after {STARTUP_TIMEOUT_S:.0f} s"
                   if self._watchdog_fired.is_set() else f"exit code {rc}")
            raise RuntimeError(
                f"quantserve did not log 'server ready' ({why}); command: "
                f"{' '.join(self.cmd)}\n--- stderr ---\n{self.log_text()}")
        if self.port is None:
            self.stop_hard()
            raise RuntimeError("no 'gRPC listening on 127.0.0.1:PORT' line "
                               "before 'server ready':\n" + self.log_text())

        # Keep draining stderr so the pipe never fills up.
        def drain():
            for raw in iter(self.proc.stderr.readline, b""):
                self._append(raw)

        self._drainer = threading.Thread(target=drain, name="stderr-drain",
                                         daemon=True)
        self._drainer.start()

    def terminate(self, timeout):
        """SIGTERM; returns the exit code, or None if it did not exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        if self._drainer is not None:
            self._drainer.join(timeout=5)
        return rc

    def stop_hard(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._drainer is not None:
            self._drainer.join(timeout=5)


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def output_array(resp, index):
    """Decodes output `index` of a ModelInferResponse as a numpy array."""
    out = resp.outputs[index]
    shape = tuple(out.shape)
    if len(resp.raw_output_contents) > 0:
        if out.datatype != "FP32":
            raise AssertionError(f"output {out.name}: datatype {out.datatype}")
        arr = np.frombuffer(resp.raw_output_contents[index], dtype="<f4")
    else:
        arr = np.array(out.contents.fp32_contents, dtype=np.float32)
    return arr.reshape(shape)


# --------------------------------------------------------------------------
# the tests
# --------------------------------------------------------------------------

class QuantserveGrpcTest(unittest.TestCase):
    """Every RPC of the KServe v2 / Triton protocol that quantserve serves."""

    daemon = None
    channel = None
    stub = None
    health = None
    tiny_successes = 0  # successful ModelInfer calls on "tiny" (version 2)

    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon(ARGS.binary, ARGS.repo)
        cls.daemon.start()
        try:
            cls.channel = grpc.insecure_channel(f"127.0.0.1:{cls.daemon.port}")
            grpc.channel_ready_future(cls.channel).result(timeout=RPC_TIMEOUT_S)
            cls.stub = PB.service_grpc.GRPCInferenceServiceStub(cls.channel)
            cls.health = PB.health_grpc.HealthStub(cls.channel)
        except Exception:
            cls.daemon.stop_hard()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.channel is not None:
            cls.channel.close()
        if cls.daemon is not None and cls.daemon.proc.poll() is None:
            # test_99 did not run (or failed): do not leave the daemon behind.
            if cls.daemon.terminate(SHUTDOWN_TIMEOUT_S) is None:
                cls.daemon.stop_hard()

    # ---- helpers ----

    def assertRpcError(self, code, fn, request, msg_re=None):
        with self.assertRaises(grpc.RpcError) as cm:
            fn(request, timeout=RPC_TIMEOUT_S)
        err = cm.exception
        self.assertEqual(err.code(), code,
                         f"expected {code}, got {err.code()}: {err.details()}")
        if msg_re is not None:
            self.assertRegex(err.details() or "", msg_re)
        return err

    def tiny_request(self, x=TINY_X, request_id=""):
        req = PB.service.ModelInferRequest(model_name="tiny", id=request_id)
        req.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
        req.raw_input_contents.append(np.ascontiguousarray(x, dtype="<f4").tobytes())
        return req

    def infer_tiny(self, req):
        resp = self.stub.ModelInfer(req, timeout=RPC_TIMEOUT_S)
        type(self).tiny_successes += 1
        return resp

    def index(self, ready_only=False):
        resp = self.stub.RepositoryIndex(
            PB.service.RepositoryIndexRequest(ready=ready_only),
            timeout=RPC_TIMEOUT_S)
        by_name = {}
        for m in resp.models:
            by_name.setdefault(m.name, []).append(m)
        return by_name

    # ---- health / server ----

    def test_01_server_live(self):
        resp = self.stub.ServerLive(PB.service.ServerLiveRequest(),
                                    timeout=RPC_TIMEOUT_S)
        self.assertTrue(resp.live)

    def test_02_server_ready(self):
        resp = self.stub.ServerReady(PB.service.ServerReadyRequest(),
                                     timeout=RPC_TIMEOUT_S)
        self.assertTrue(resp.ready)

    def test_03_server_metadata(self):
        resp = self.stub.ServerMetadata(PB.service.ServerMetadataRequest(),
                                        timeout=RPC_TIMEOUT_S)
        self.assertEqual(resp.name, "quantserve")
        self.assertTrue(resp.version, "empty server version")
        self.assertIn("model_repository", resp.extensions)
        self.assertIn("statistics", resp.extensions)

    def test_04_health_check(self):
        Status = PB.health.HealthCheckResponse
        resp = self.health.Check(PB.health.HealthCheckRequest(service=""),
                                 timeout=RPC_TIMEOUT_S)
        self.assertEqual(resp.status, Status.SERVING,
                         Status.ServingStatus.Name(resp.status))
        resp = self.health.Check(
            PB.health.HealthCheckRequest(service="inference.GRPCInferenceService"),
            timeout=RPC_TIMEOUT_S)
        self.assertEqual(resp.status, Status.SERVING,
                         Status.ServingStatus.Name(resp.status))
        self.assertRpcError(grpc.StatusCode.NOT_FOUND, self.health.Check,
                            PB.health.HealthCheckRequest(service="no.such.Service"))

    # ---- model readiness / metadata / config ----

    def test_05_model_ready(self):
        resp = self.stub.ModelReady(PB.service.ModelReadyRequest(name="tiny"),
                                    timeout=RPC_TIMEOUT_S)
        self.assertTrue(resp.ready)
        resp = self.stub.ModelReady(
            PB.service.ModelReadyRequest(name="tiny", version="2"),
            timeout=RPC_TIMEOUT_S)
        self.assertTrue(resp.ready)
        for name in sorted(READY_MODELS):
            resp = self.stub.ModelReady(PB.service.ModelReadyRequest(name=name),
                                        timeout=RPC_TIMEOUT_S)
            self.assertTrue(resp.ready, f"model {name} not ready")
        self.assertRpcError(grpc.StatusCode.NOT_FOUND, self.stub.ModelReady,
                            PB.service.ModelReadyRequest(name="no_such_model"))

    def test_05b_model_ready_path_traversal(self):
        with self.assertRaises(grpc.RpcError) as cm:
            self.stub.ModelReady(PB.service.ModelReadyRequest(name="../tiny"),
                                 timeout=RPC_TIMEOUT_S)
        self.assertIn(cm.exception.code(),
                      (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT),
                      f"got {cm.exception.code()}: {cm.exception.details()}")

    def test_05c_model_ready_not_served(self):
        # Broken models exist but are not ready: ready=false (not an error).
        for name in sorted(BROKEN_MODELS):
            resp = self.stub.ModelReady(PB.service.ModelReadyRequest(name=name),
                                        timeout=RPC_TIMEOUT_S)
            self.assertFalse(resp.ready, f"broken model {name} reported ready")
        # tiny version 1 is not served under the default (latest 1) policy.
        try:
            resp = self.stub.ModelReady(
                PB.service.ModelReadyRequest(name="tiny", version="1"),
                timeout=RPC_TIMEOUT_S)
            self.assertFalse(resp.ready, "tiny version 1 should not be served")
        except grpc.RpcError as e:
            self.assertEqual(e.code(), grpc.StatusCode.NOT_FOUND, e.details())

    def test_06_model_metadata_tiny(self):
        resp = self.stub.ModelMetadata(PB.service.ModelMetadataRequest(name="tiny"),
                                       timeout=RPC_TIMEOUT_S)
        self.assertEqual(resp.name, "tiny")
        self.assertIn("2", resp.versions)
        self.assertEqual(len(resp.inputs), 1)
        self.assertEqual(resp.inputs[0].name, "x")
        self.assertEqual(resp.inputs[0].datatype, "FP32")
        self.assertEqual(list(resp.inputs[0].shape), [-1, 4])
        self.assertEqual(len(resp.outputs), 1)
        self.assertEqual(resp.outputs[0].name, "y")
        self.assertEqual(resp.outputs[0].datatype, "FP32")
        self.assertEqual(list(resp.outputs[0].shape), [-1, 3])

    def test_06b_model_metadata_digits(self):
        resp = self.stub.ModelMetadata(
            PB.service.ModelMetadataRequest(name="digits_mlp"), timeout=RPC_TIMEOUT_S)
        self.assertEqual(resp.name, "digits_mlp")
        self.assertEqual([(t.name, t.datatype, list(t.shape)) for t in resp.inputs],
                         [("input", "FP32", [-1, 64])])
        self.assertEqual([(t.name, t.datatype, list(t.shape)) for t in resp.outputs],
                         [("probabilities", "FP32", [-1, 10])])
        # digits_cnn's config names no tensors: the server derives them.
        resp = self.stub.ModelMetadata(
            PB.service.ModelMetadataRequest(name="digits_cnn"), timeout=RPC_TIMEOUT_S)
        self.assertEqual([(t.name, t.datatype, list(t.shape)) for t in resp.inputs],
                         [("image", "FP32", [-1, 1, 8, 8])])
        self.assertEqual([(t.name, t.datatype, list(t.shape)) for t in resp.outputs],
                         [("logits", "FP32", [-1, 10])])
        self.assertRpcError(grpc.StatusCode.NOT_FOUND, self.stub.ModelMetadata,
                            PB.service.ModelMetadataRequest(name="no_such_model"))

    def test_07_model_config_tiny(self):
        resp = self.stub.ModelConfig(PB.service.ModelConfigRequest(name="tiny"),
                                     timeout=RPC_TIMEOUT_S)
        cfg = resp.config
        self.assertEqual(cfg.name, "tiny")
        self.assertEqual(cfg.max_batch_size, 4)  # auto-completed default
        self.assertEqual(len(cfg.input), 1)
        self.assertEqual(cfg.input[0].name, "x")
        self.assertEqual(cfg.input[0].data_type, PB.config.TYPE_FP32)
        self.assertEqual(list(cfg.input[0].dims), [4])
        self.assertEqual(len(cfg.output), 1)
        self.assertEqual(cfg.output[0].name, "y")
        self.assertEqual(cfg.output[0].data_type, PB.config.TYPE_FP32)
        self.assertEqual(list(cfg.output[0].dims), [3])

    def test_07b_model_config_digits(self):
        resp = self.stub.ModelConfig(PB.service.ModelConfigRequest(name="digits_mlp"),
                                     timeout=RPC_TIMEOUT_S)
        cfg = resp.config
        self.assertEqual(cfg.name, "digits_mlp")
        self.assertEqual(cfg.max_batch_size, 32)
        self.assertEqual([(i.name, list(i.dims)) for i in cfg.input], [("input", [64])])
        self.assertEqual([(o.name, list(o.dims)) for o in cfg.output],
                         [("probabilities", [10])])
        self.assertTrue(cfg.HasField("dynamic_batching"))
        self.assertEqual(cfg.dynamic_batching.max_queue_delay_microseconds, 500)
        self.assertRpcError(grpc.StatusCode.NOT_FOUND, self.stub.ModelConfig,
                            PB.service.ModelConfigRequest(name="no_such_model"))

    # ---- repository ----

    def test_08_repository_index(self):
        idx = self.index()
        self.assertNotIn("bad..name", idx)
        for name in sorted(READY_MODELS):
            self.assertIn(name, idx, f"model {name} missing from the index")
            states = [(m.version, m.state) for m in idx[name]]
            self.assertIn("READY", [s for _, s in states], f"{name}: {states}")
        tiny_ready = [m.version for m in idx["tiny"] if m.state == "READY"]
        self.assertEqual(tiny_ready, ["2"])
        for name in sorted(BROKEN_MODELS):
            self.assertIn(name, idx, f"model {name} missing from the index")
            for m in idx[name]:
                self.assertEqual(m.state, "UNAVAILABLE",
                                 f"{name} version {m.version!r}: {m.state}")
                self.assertTrue(m.reason, f"{name}: UNAVAILABLE without a reason")
        reasons = {n: " | ".join(m.reason for m in idx[n]) for n in BROKEN_MODELS}
        self.assertIn("config.pbtxt:3:", reasons["bad_config"])
        self.assertIn("not_in_model", reasons["missing_input"])

    def test_08b_repository_index_ready_only(self):
        idx = self.index(ready_only=True)
        self.assertEqual(set(idx), READY_MODELS)
        for name, entries in idx.items():
            for m in entries:
                self.assertEqual(m.state, "READY", f"{name} {m.version}: {m.state}")
        self.assertEqual([m.version for m in idx["tiny"]], ["2"])

    # ---- inference ----

    def test_10_infer_tiny_raw(self):
        resp = self.infer_tiny(self.tiny_request(request_id="py-raw-1"))
        self.assertEqual(resp.id, "py-raw-1")
        self.assertEqual(resp.model_name, "tiny")
        self.assertEqual(resp.model_version, "2")
        self.assertEqual(len(resp.outputs), 1)
        self.assertEqual(resp.outputs[0].name, "y")
        self.assertEqual(resp.outputs[0].datatype, "FP32")
        self.assertEqual(list(resp.outputs[0].shape), [1, 3])
        self.assertEqual(len(resp.raw_output_contents), 1)
        self.assertEqual(len(resp.raw_output_contents[0]), 3 * 4)
        y = output_array(resp, 0)
        np.testing.assert_array_equal(y, TINY_Y_V2)

    def test_11_infer_tiny_typed_contents(self):
        req = PB.service.ModelInferRequest(model_name="tiny", id="py-typed-1")
        inp = req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
        inp.contents.fp32_contents.extend(TINY_X.ravel().tolist())
        req.outputs.add(name="y")
        resp = self.infer_tiny(req)
        self.assertEqual(resp.id, "py-typed-1")
        self.assertEqual(resp.model_version, "2")
        self.assertEqual([o.name for o in resp.outputs], ["y"])
        self.assertEqual(list(resp.outputs[0].shape), [1, 3])
        np.testing.assert_array_equal(output_array(resp, 0), TINY_Y_V2)

    def test_12_infer_tiny_batch_and_zeros(self):
        # Batch of 2 (max_batch_size 4): rows are independent.
        x = np.vstack([TINY_X, np.zeros((1, 4), np.float32)])
        resp = self.infer_tiny(self.tiny_request(x, request_id="py-batch-2"))
        self.assertEqual(list(resp.outputs[0].shape), [2, 3])
        np.testing.assert_array_equal(
            output_array(resp, 0),
            np.array([[0.0, 1.5, 11.25], [1.5, 0.0, 1.25]], np.float32))

    def test_13_infer_digits_mlp_heldout(self):
        testdata = os.path.join(ARGS.repo, "digits_mlp", "testdata")
        x = np.load(os.path.join(testdata, "x.npy")).astype(np.float32)
        y = np.load(os.path.join(testdata, "y.npy"))
        self.assertEqual(x.shape[1], 64)
        self.assertEqual(len(x), len(y))
        probs = []
        for start in range(0, len(x), 32):
            batch = np.ascontiguousarray(x[start:start + 32], dtype="<f4")
            req = PB.service.ModelInferRequest(model_name="digits_mlp",
                                               id=f"digits-{start}")
            req.inputs.add(name="input", datatype="FP32", shape=list(batch.shape))
            req.raw_input_contents.append(batch.tobytes())
            resp = self.stub.ModelInfer(req, timeout=RPC_TIMEOUT_S)
            self.assertEqual(resp.id, f"digits-{start}")
            self.assertEqual([o.name for o in resp.outputs], ["probabilities"])
            self.assertEqual(resp.outputs[0].datatype, "FP32")
            self.assertEqual(list(resp.outputs[0].shape), [len(batch), 10])
            probs.append(output_array(resp, 0))
        p = np.concatenate(probs)
        self.assertEqual(p.shape, (len(x), 10))
        self.assertTrue(np.all(np.isfinite(p)))
        row_sums = p.astype(np.float64).sum(axis=1)
        worst = float(np.abs(row_sums - 1.0).max())
        self.assertLessEqual(worst, 1e-5, f"max |sum(probabilities) - 1| = {worst}")
        acc = float(np.mean(p.argmax(axis=1) == y))
        print(f"\n  digits_mlp held-out accuracy over gRPC: {acc:.4f} "
              f"(n={len(y)}, max |row sum - 1| {worst:.2e})", file=sys.stderr)
        self.assertGreaterEqual(acc, 0.97)

    def test_13b_infer_digits_mlp_fp16(self):
        """The half-precision file: FP16 on the wire both ways, against numpy computing
        the FLOAT16 weights in float32 (what the server promises) and against the FP32
        model's own answers."""
        meta = self.stub.ModelMetadata(
            PB.service.ModelMetadataRequest(name="digits_mlp_fp16"), timeout=RPC_TIMEOUT_S)
        self.assertEqual([(t.name, t.datatype) for t in meta.inputs], [("input", "FP16")])
        self.assertEqual([(t.name, t.datatype) for t in meta.outputs],
                         [("probabilities", "FP16")])
        model = onnx.load(os.path.join(ARGS.repo, "digits_mlp_fp16", "1", "model.onnx"))
        w = {t.name: numpy_helper.to_array(t).astype(np.float32)
             for t in model.graph.initializer}
        testdata = os.path.join(ARGS.repo, "digits_mlp", "testdata")
        x = np.load(os.path.join(testdata, "x.npy")).astype(np.float16)
        y = np.load(os.path.join(testdata, "y.npy"))
        got = []
        for start in range(0, len(x), 32):
            batch = np.ascontiguousarray(x[start:start + 32], dtype="<f2")
            req = PB.service.ModelInferRequest(model_name="digits_mlp_fp16")
            req.inputs.add(name="input", datatype="FP16", shape=list(batch.shape))
            req.raw_input_contents.append(batch.tobytes())
            resp = self.stub.ModelInfer(req, timeout=RPC_TIMEOUT_S)
            self.assertEqual(resp.outputs[0].datatype, "FP16")
            self.assertEqual(list(resp.outputs[0].shape), [len(batch), 10])
            self.assertEqual(len(resp.raw_output_contents[0]), 2 * 10 * len(batch))
            got.append(np.frombuffer(resp.raw_output_contents[0], dtype="<f2")
                       .reshape(len(batch), 10))
        p = np.concatenate(got).astype(np.float32)
        xf = x.astype(np.float32)
        h = np.maximum(xf @ w["fc1.weight"].T + w["fc1.bias"], 0.0)
        z = h @ w["fc2.weight"].T + w["fc2.bias"]
        e = np.exp(z - z.max(axis=1, keepdims=True))
        want = (e / e.sum(axis=1, keepdims=True)).astype(np.float16).astype(np.float32)
        # Both round to half at the end; one half step (<= 2^-11 below 1) apart at most.
        worst = float(np.abs(p - want).max())
        self.assertLessEqual(worst, 2.0 ** -11, f"max |server - numpy| = {worst}")
        acc = float(np.mean(p.argmax(axis=1) == y))
        print(f"\n  digits_mlp_fp16 held-out accuracy over gRPC: {acc:.4f} "
              f"(max |server - numpy| {worst:.2e})", file=sys.stderr)
        self.assertGreaterEqual(acc, 0.97)

    def test_14_infer_digits_cnn_heldout(self):
        testdata = os.path.join(ARGS.repo, "digits_cnn", "testdata")
        x = np.load(os.path.join(testdata, "x.npy")).astype(np.float32)
        y = np.load(os.path.join(testdata, "y.npy"))
        logits = []
        for start in range(0, len(x), 16):  # max_batch_size 16
            batch = np.ascontiguousarray(x[start:start + 16], dtype="<f4")
            req = PB.service.ModelInferRequest(model_name="digits_cnn")
            req.inputs.add(name="image", datatype="FP32", shape=list(batch.shape))
            req.raw_input_contents.append(batch.tobytes())
            resp = self.stub.ModelInfer(req, timeout=RPC_TIMEOUT_S)
            self.assertEqual(list(resp.outputs[0].shape), [len(batch), 10])
            logits.append(output_array(resp, 0))
        acc = float(np.mean(np.concatenate(logits).argmax(axis=1) == y))
        print(f"\n  digits_cnn held-out accuracy over gRPC: {acc:.4f}",
              file=sys.stderr)
        # make_example_models.py reports 0.9528 for the numpy reference.
        self.assertGreaterEqual(acc, 0.9)

    # ---- inference errors ----

    def test_20_infer_unknown_model(self):
        req = self.tiny_request()
        req.model_name = "no_such_model"
        self.assertRpcError(grpc.StatusCode.NOT_FOUND, self.stub.ModelInfer, req)

    def test_21_infer_wrong_datatype(self):
        req = self.tiny_request()
        req.inputs[0].datatype = "BYTES"
        self.assertRpcError(grpc.StatusCode.INVALID_ARGUMENT, self.stub.ModelInfer, req)

    def test_22_infer_wrong_shape(self):
        x = np.arange(5, dtype=np.float32).reshape(1, 5)
        err = self.assertRpcError(grpc.StatusCode.INVALID_ARGUMENT,
                                  self.stub.ModelInfer, self.tiny_request(x))
        self.assertRegex(err.details() or "", r"\bx\b",
                         "error message does not name input 'x'")

    def test_23_infer_raw_size_mismatch(self):
        req = self.tiny_request()
        req.raw_input_contents[0] = req.raw_input_contents[0][:12]  # 3 of 4 floats
        self.assertRpcError(grpc.StatusCode.INVALID_ARGUMENT, self.stub.ModelInfer, req)

    def test_24_infer_missing_input(self):
        req = PB.service.ModelInferRequest(model_name="tiny", id="no-inputs")
        err = self.assertRpcError(grpc.StatusCode.INVALID_ARGUMENT,
                                  self.stub.ModelInfer, req)
        self.assertRegex(err.details() or "", r"\bx\b")

    def test_25_infer_unknown_input_name(self):
        req = self.tiny_request()
        req.inputs[0].name = "not_x"
        self.assertRpcError(grpc.StatusCode.INVALID_ARGUMENT, self.stub.ModelInfer, req)

    def test_26_infer_unavailable_model(self):
        req = self.tiny_request()
        req.model_name = "missing_input"
        self.assertRpcError(grpc.StatusCode.UNAVAILABLE, self.stub.ModelInfer, req)

    # ---- statistics (after the inferences above) ----

    def test_30_model_statistics(self):
        # Two more successful requests, so the counts are non-zero on their own.
        for i in range(2):
            self.infer_tiny(self.tiny_request(request_id=f"stats-{i}"))
        want = type(self).tiny_successes
        resp = self.stub.ModelStatistics(
            PB.service.ModelStatisticsRequest(name="tiny"), timeout=RPC_TIMEOUT_S)
        self.assertTrue(resp.model_stats, "no statistics for tiny")
        self.assertEqual({s.name for s in resp.model_stats}, {"tiny"})
        by_version = {s.version: s for s in resp.model_stats}
        self.assertIn("2", by_version)
        st = by_version["2"]
        self.assertGreaterEqual(st.inference_count, want)
        self.assertEqual(st.inference_stats.success.count, want)
        self.assertGreater(st.inference_stats.success.ns, 0)
        self.assertGreaterEqual(st.execution_count, 1)
        self.assertGreater(st.last_inference, 0)
        # Empty name: every ready model.
        resp = self.stub.ModelStatistics(PB.service.ModelStatisticsRequest(),
                                         timeout=RPC_TIMEOUT_S)
        self.assertTrue(READY_MODELS.issubset({s.name for s in resp.model_stats}),
                        [s.name for s in resp.model_stats])
        self.assertRpcError(grpc.StatusCode.NOT_FOUND, self.stub.ModelStatistics,
                            PB.service.ModelStatisticsRequest(name="no_such_model"))

    # ---- unsupported extensions ----

    def test_40_shared_memory_unimplemented(self):
        self.assertRpcError(grpc.StatusCode.UNIMPLEMENTED,
                            self.stub.SystemSharedMemoryStatus,
                            PB.service.SystemSharedMemoryStatusRequest())

    # ---- shutdown (must stay last) ----

    def test_99_sigterm_exit_code(self):
        self.channel.close()
        type(self).channel = None
        rc = self.daemon.terminate(SHUTDOWN_TIMEOUT_S)
        if rc is None:
            self.daemon.stop_hard()
            self.fail(f"quantserve did not exit within {SHUTDOWN_TIMEOUT_S:.0f} s "
                      f"of SIGTERM")
        self.assertEqual(rc, 0, "exit code after SIGTERM\n--- stderr ---\n"
                         + self.daemon.log_text()[-4000:])
        self.assertIn("SIGTERM", self.daemon.log_text())


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default=os.environ.get("QS_BINARY"),
                    help="quantserve executable (env QS_BINARY)")
    ap.add_argument("--repo", default=os.environ.get("QS_TEST_REPO"),
                    help="test model repository (env QS_TEST_REPO)")
    ap.add_argument("--protos", default=os.environ.get("QS_PROTO_DIR"),
                    help="directory with grpc_service.proto, model_config.proto "
                         "and health.proto (env QS_PROTO_DIR)")
    ap.add_argument("-k", dest="patterns", action="append", default=[],
                    help="only run tests whose name contains this substring "
                         "(repeatable, like unittest -k)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    for flag in ("binary", "repo", "protos"):
        if not getattr(args, flag):
            ap.error(f"--{flag} (or its environment variable) is required")
    args.binary = os.path.abspath(args.binary)
    args.repo = os.path.abspath(args.repo)
    args.protos = os.path.abspath(args.protos)
    if not os.access(args.binary, os.X_OK):
        ap.error(f"not an executable: {args.binary}")
    if not os.path.isdir(args.repo):
        ap.error(f"not a directory: {args.repo}")
    return args


def main(argv=None):
    global ARGS, PB
    ARGS = parse_args(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="qs_pystubs_") as stub_dir:
        PB = generate_stubs(ARGS.protos, stub_dir)
        loader = unittest.TestLoader()
        if ARGS.patterns:
            loader.testNamePatterns = [f"*{p}*" for p in ARGS.patterns]
        suite = loader.loadTestsFromTestCase(QuantserveGrpcTest)
        t0 = time.monotonic()
        result = unittest.TextTestRunner(
            stream=sys.stderr, verbosity=2 if ARGS.verbose else 1).run(suite)
        elapsed = time.monotonic() - t0
    failed = (len(result.failures) + len(result.errors)
              + len(result.unexpectedSuccesses))
    # Errors in setUpClass/tearDownClass are not tests that ran.
    ran_failed = sum(1 for t, _ in result.failures + result.errors
                     if isinstance(t, unittest.TestCase))
    passed = result.testsRun - ran_failed - len(result.skipped) \
        - len(result.unexpectedSuccesses)
    print(f"({elapsed:.1f} s)", file=sys.stderr, flush=True)
    print(f"python_client: {passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 and result.testsRun > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
