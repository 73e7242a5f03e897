"""The dataset downloader against a local HTTP server: success, wrong checksum, broken transfer."""

import hashlib
import http.server
import os
import threading

import pytest

from bloodcell_jax.tools import download

PAYLOAD = os.urandom(200_000)


class _Handler(http.server.BaseHTTPRequestHandler):
  def do_GET(self):
    if self.path.startswith("/broken"):
      self.send_response(200)
      self.send_header("Content-Length", str(len(PAYLOAD)))
      self.end_headers()
      self.wfile.write(PAYLOAD[:50_000])  # then the connection closes early
      self.wfile.flush()
      self.close_connection = True
      return
    if self.path.startswith("/missing"):
      self.send_error(404)
      return
    self.send_response(200)
    self.send_header("Content-Length", str(len(PAYLOAD)))
    self.end_headers()
    self.wfile.write(PAYLOAD)

  def log_message(self, *args):
    pass


@pytest.fixture(scope="module")
def server():
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{httpd.server_address[1]}"
  httpd.shutdown()


MD5 = hashlib.md5(PAYLOAD).hexdigest()


def test_download_verifies_and_skips_existing(server, tmp_path):
  dest = str(tmp_path / "sub" / "file.npz")
  assert download.download(f"{server}/file.npz", dest, MD5, attempts=1) == dest
  assert open(dest, "rb").read() == PAYLOAD
  before = os.stat(dest).st_mtime_ns
  download.download(f"{server}/missing", dest, MD5, attempts=1)  # present and valid: not fetched
  assert os.stat(dest).st_mtime_ns == before


def test_wrong_checksum_leaves_nothing(server, tmp_path):
  dest = tmp_path / "file.npz"
  with pytest.raises(download.DownloadError, match="checksum mismatch"):
    download.download(f"{server}/file.npz", str(dest), "0" * 32, attempts=1)
  assert os.listdir(tmp_path) == []


def test_broken_connection_leaves_nothing_and_retries(server, tmp_path):
  dest = tmp_path / "file.npz"
  with pytest.raises(download.DownloadError, match="file.npz|bytes|download failed"):
    download.download(f"{server}/broken/file.npz", str(dest), MD5, attempts=2, retry_wait=0.01)
  assert os.listdir(tmp_path) == []


def test_http_error_and_cli_exit_codes(server, tmp_path, capsys):
  with pytest.raises(download.DownloadError, match="404"):
    download.download(f"{server}/missing", str(tmp_path / "x"), MD5, attempts=1)
  code = download.main(["bloodmnist", "--size", "28", "--dest", str(tmp_path), "--mirror", server + "/missing",
                        "--attempts", "1"])
  assert code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ")
  assert os.listdir(tmp_path) == []
  assert download.main(["pbc"]) == 0
  assert "doi:10.17632/snkd93bnjr.1" in capsys.readouterr().out
  for argv, message in ((["bloodmnist", "--size", "30"], "--size must be one of 28, 64, 128, 224"),
                        (["imagenet"], "imagenet: unknown dataset; choose one of bloodmnist, pbc"),
                        ([], "missing DATASET"), (["bloodmnist", "--attempts=0"], "--attempts=0")):
    assert download.main(argv + [f"--dest={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
  assert os.listdir(tmp_path) == []
