"""The lifecycle shared by the helpers that run an SSH daemon on loopback (``Sshd``,
``TargetHost``): prepare, spawn on a free port (another port when it was taken in
between), wait until it greets with ``SSH-``, stop and clean up, and the log.

A subclass gives ``_prepare()`` (once, before the first spawn), ``_spawn()`` (start
``self.process`` writing to ``self._log``), ``_terminate()`` (end the process),
``_cleanup()`` (remove what ``_prepare`` made) and ``log_path()``; ``error`` is the
exception class it raises.
"""
import socket
import subprocess
import time


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class LoopbackDaemon:
    error = RuntimeError
    name = 'sshd'
    attempts = 5

    host = '127.0.0.1'
    port = None
    process = None
    _log = None

    def start(self, timeout=20):
        try:
            self._prepare()
            last_error = None
            for _attempt in range(self.attempts):
                self.port = free_port()
                self._log = open(self.log_path(), 'ab')
                self._spawn()
                try:
                    self._wait_ready(timeout)
                    return self
                except self.error as exc:  # port taken in between: try another one
                    last_error = exc
                    self._kill()
            raise last_error
        except BaseException:
            self.stop()
            raise

    def stop(self):
        self._kill()
        self._cleanup()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log(self):
        try:
            with open(self.log_path(), errors='replace') as f:
                return f.read()
        except (OSError, TypeError):
            return ''

    def _waiting(self):
        """Called while waiting for the daemon to answer."""

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise self.error('%s exited with %s:\n%s'
                                 % (self.name, self.process.returncode, self.log()))
            self._waiting()
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as s:
                    if s.recv(4).startswith(b'SSH-'):
                        return
            except OSError:
                time.sleep(0.05)
        raise self.error('%s did not answer on port %d:\n%s' % (self.name, self.port, self.log()))

    def _terminate(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _kill(self):
        if self.process is not None:
            if self.process.poll() is None:
                self._terminate()
            self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None
