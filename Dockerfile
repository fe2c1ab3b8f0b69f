# The serving image: `tailor serve` over the ONNX export of a model directory mounted at /models (read-only),
# HTTP on 8000 and gRPC on 8001 (KServe v2 / Triton), no torch. Built by `make image`; see the README's "Container".
#
#   docker build -t tailorrt .
#   docker run -v "$PWD/runs/demo:/models:ro" -p 8000:8000 -p 8001:8001 -e TAILOR_API_KEY=secret tailorrt
#
# BASE: any Debian-like image with python3 and its venv module (python:3.12-slim by default).
# WHEELS=1: install from the wheels in wheelhouse/ only (an offline build: no index is asked).
ARG BASE=python:3.12-slim

FROM ${BASE} AS build
ARG WHEELS=0
COPY wheelhouse/ /wheelhouse/
COPY pyproject.toml README.md /src/
COPY tailorrt/ /src/tailorrt/
COPY cli/ /src/cli/
COPY export/ /src/export/
COPY serving/ /src/serving/
COPY tools/ /src/tools/
RUN set -eu; \
    if [ "$WHEELS" = 1 ]; then index="--no-index --find-links /wheelhouse"; else index=""; fi; \
    python3 -m venv /opt/tailorrt; \
    /opt/tailorrt/bin/pip install --no-cache-dir --disable-pip-version-check $index wheel; \
    /opt/tailorrt/bin/pip wheel --no-cache-dir --disable-pip-version-check $index --no-deps -w /dist /src; \
    /opt/tailorrt/bin/pip install --no-cache-dir --disable-pip-version-check $index /dist/tailorrt-*.whl; \
    /opt/tailorrt/bin/pip uninstall --yes --quiet wheel setuptools pip

FROM ${BASE}
COPY --from=build /opt/tailorrt /opt/tailorrt
RUN useradd --system --uid 10001 --create-home --home-dir /home/tailor --shell /usr/sbin/nologin tailor
# every `tailor serve` option can be set as TAILOR_<OPTION> (tailor serve --help lists them)
ENV PATH=/opt/tailorrt/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TAILOR_MODEL_DIR=/models \
    TAILOR_BACKEND=onnx \
    TAILOR_HOST=0.0.0.0 \
    TAILOR_PORT=8000 \
    TAILOR_GRPC_PORT=8001
USER 10001
WORKDIR /home/tailor
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['TAILOR_PORT'] + '/v2/health/ready', timeout=2)"]
ENTRYPOINT ["tailor", "serve"]
