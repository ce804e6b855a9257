"""Issue 22, messages: a client hanging up mid-upload is one INFO line, never a traceback."""

from __future__ import annotations

import logging
import socket
import time
from urllib.parse import urlparse

from deploy_helpers import running_service

from skipganomaly.deploy.detector import Detector


def test_a_client_hanging_up_mid_upload_logs_one_info_line(digits_onnx, caplog):
    detector = Detector.from_onnx(digits_onnx)
    caplog.set_level(logging.INFO)
    clients = 5
    with running_service(detector) as url:
        where = urlparse(url)
        for _ in range(clients):
            with socket.create_connection((where.hostname, where.port)) as sock:
                boundary = "xyz"
                head = (
                    f"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                    f"boundary={boundary}\r\nContent-Length: 100000\r\n\r\n"
                    f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n'
                    "Content-Type: image/png\r\n\r\n"
                )
                sock.sendall(head.encode() + b"\x89PNG" + b"\0" * 500)
                time.sleep(0.2)  # the server is reading the body when the client goes
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if sum("disconnected during its upload" in r.getMessage() for r in caplog.records) >= clients:
                break
            time.sleep(0.1)
    hung_up = [r for r in caplog.records if "disconnected during its upload" in r.getMessage()]
    assert len(hung_up) == clients and all(r.levelno == logging.INFO for r in hung_up)
    assert all(r.exc_info is None for r in hung_up)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
