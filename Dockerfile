# syntax=docker/dockerfile:1
#
# sidecar: a two-stage image. The build stage has a compiler: it compiles the proxy's hot
# path with mypyc (sidecar/compiled.py), and builds any dependency that ships no wheel for
# the platform; the runtime stage gets the finished virtualenv and nothing else.
#
#   docker build -t sidecar:0.1.0 .
#   docker build --build-arg SIDECAR_COMPILE=0 -t sidecar:0.1.0-pure .   # pure Python
#   docker run --rm -p 8080:8080 \
#     -v "$PWD/config:/etc/sidecar:ro" -e SIDECAR_ADMIN_KEY sidecar:0.1.0
#
# The container runs as uid 10001 and writes only to /var/lib/sidecar (SQLite) and /tmp,
# so it works with a read-only root filesystem (see deploy/kubernetes/).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
# The venv path is the same in both stages: its scripts' shebangs point into it.
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY build_support ./build_support
COPY sidecar ./sidecar
# 1: the hot path compiled (mypy and the build's own copies of the dependencies live only in
# pip's throwaway build environment); a module that does not compile fails the build. The
# check runs from / (-P): the installed package, not /src/sidecar.
ARG SIDECAR_COMPILE=1
RUN pip install '.[speed]' \
 && cd / && python -P -c 'import sys; from sidecar import compiled; s = compiled.state(); \
      print("sidecar: hot path", s.describe()); \
      sys.exit(s.label != ("mypyc" if sys.argv[1] == "1" else "no"))' "$SIDECAR_COMPILE" \
 && python -m compileall -q -o 0 -o 2 /opt/venv/lib

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="sidecar" \
      org.opencontainers.image.description="Auth proxy turning one-time refer links into sessions"
# MALLOC_ARENA_MAX: glibc gives every thread that allocates a malloc arena of its own (up
# to 8 per core); the SQLite reader and writer, the executor and libuv's resolver threads
# each keep one partly touched. Two (the event loop's and one the threads share) hold
# ~0.3-0.4 MiB less per process (python -m bench.memory --env MALLOC_ARENA_MAX=2).
# PYTHONOPTIMIZE=2 (python -OO): no docstrings and no assert statements in the loaded code.
# Nothing reads a docstring at run time (argparse's help is its own strings); the sidecar's
# asserts narrow types for mypy and its dependencies' state internal invariants, none checks
# input. The ~1.2 MiB of docstrings, most of them the standard library's, are not kept in every
# process (python -m bench.memory --env PYTHONOPTIMIZE=2, compiled, 5 trials: idle 56.8 ->
# 55.6 MiB, with 1,000 connections 60.6 -> 59.5).
# The build stage compiles the venv's bytecode for both levels (-o 0 -o 2): with or without
# the setting, a start on the read-only root filesystem does not compile it again.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=2 \
    PYTHONOPTIMIZE=2 \
    SIDECAR_HEALTHCHECK_URL=http://127.0.0.1:8080/_sidecar/healthz
# The base image ships no bytecode (the official python images delete every .pyc): with
# PYTHONDONTWRITEBYTECODE and a read-only root filesystem, every start would compile each
# standard-library module it imports again, 0.34 s of CPU and 2.2 MiB more peak RSS per
# start (import sidecar.app and sidecar.cli with -X pycache_prefix, empty against filled).
# Level 2 only, the level PYTHONOPTIMIZE asks for (~11 MB); the modules no service imports
# (and the test suites, if the base image kept them) are left out, and site-packages (the
# base image's pip: the venv has its own).
RUN python -m compileall -q -j 0 -o 2 \
      -x '/(site-packages|test|tests|idlelib|lib2to3|tkinter|turtledemo|ensurepip|pydoc_data)/' \
      "$(python -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')"
RUN groupadd --system --gid 10001 sidecar \
 && useradd --system --uid 10001 --gid sidecar --no-create-home \
      --home-dir /var/lib/sidecar --shell /usr/sbin/nologin sidecar \
 && mkdir -p /etc/sidecar /var/lib/sidecar \
 && chown sidecar:sidecar /var/lib/sidecar
COPY --from=build /opt/venv /opt/venv
WORKDIR /var/lib/sidecar
USER 10001:10001
EXPOSE 8080
# Exits non-zero unless the proxy answers 2xx; override SIDECAR_HEALTHCHECK_URL if the
# config moves the proxy port or the /_sidecar prefix.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['SIDECAR_HEALTHCHECK_URL'], timeout=2)"]
ENTRYPOINT ["sidecar", "serve"]
CMD ["--config", "/etc/sidecar/sidecar.yaml"]
