#!/usr/bin/python3
"""`quantserve --probe=HOST:PORT` (the image's HEALTHCHECK) against a real daemon.

Usage: probe_test.py --binary build/server/quantserve

Exit statuses: 0 while the daemon answers SERVING, 1 with nothing listening, 2 without
a target; the probe needs no --model-repository and starts no server.
"""
import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

BINARY = None


def probe(target, *extra):
    return subprocess.run([BINARY, *extra, f"--probe={target}"] if target is not None
                          else [BINARY, "--probe"], capture_output=True, text=True, timeout=30)


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class ProbeTest(unittest.TestCase):
    def test_nothing_listening_is_1(self):
        t0 = time.monotonic()
        r = probe(f"127.0.0.1:{closed_port()}")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertLess(time.monotonic() - t0, 10)

    def test_no_target_is_2(self):
        self.assertEqual(probe(None).returncode, 2)
        self.assertEqual(probe("").returncode, 2)

    def test_serving_daemon_is_0_and_stopped_is_1(self):
        with tempfile.TemporaryDirectory() as repo, \
                tempfile.TemporaryFile("w+") as log:
            # An empty repository is enough for the health service.
            d = subprocess.Popen([BINARY, f"--model-repository={repo}", "--grpc-address=127.0.0.1",
                                  "--grpc-port=0", "--metrics-port=-1"],
                                 stdout=log, stderr=subprocess.STDOUT)
            try:
                port = None
                deadline = time.monotonic() + 30
                while port is None and time.monotonic() < deadline:
                    log.seek(0)
                    m = re.search(r"gRPC listening on [\d.]+:(\d+)", log.read())
                    port = m and m.group(1)
                    time.sleep(0.1)
                self.assertIsNotNone(port, "the daemon never logged its port")
                r = probe(f"127.0.0.1:{port}")
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(r.stdout.strip(), "SERVING")
                # Dash and underscore spellings, and the flag before others.
                self.assertEqual(subprocess.run([BINARY, "-probe", f"127.0.0.1:{port}"],
                                                capture_output=True).returncode, 0)
                d.send_signal(signal.SIGTERM)
                self.assertEqual(d.wait(timeout=60), 0)
                self.assertEqual(probe(f"127.0.0.1:{port}").returncode, 1)
            finally:
                if d.poll() is None:
                    d.kill()
                    d.wait()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--binary", required=True)
    args, rest = p.parse_known_args()
    BINARY = os.path.abspath(args.binary)
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
