# syntax=docker/dockerfile:1
# voicebridge: SIP/RTP + WebRTC + HTTP in one process.
#
#   docker build -t voicebridge .
#   docker run --rm -p 8080:8080 -p 5060:5060/udp -p 5060:5060/tcp \
#              -p 20000-20099:20000-20099/udp -e VOICEBRIDGE_RTP_PORT_HIGH=20099 voicebridge
#
# Two stages: the first builds a virtual environment (and has pip's caches, compilers if a
# wheel is missing); the final image gets only that environment, runs as a non-root user
# and holds no secrets (configuration comes from environment variables at run time).

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Compilers only for packages without a wheel for this platform; never in the final image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bridge ./bridge
COPY codecs ./codecs
COPY dialplans ./dialplans
# With the postgres extra: a cluster's nodes keep their records in PostgreSQL.
RUN python -m venv /opt/voicebridge \
 && /opt/voicebridge/bin/pip install '.[postgres]' \
 && /opt/voicebridge/bin/voicebridge --version

FROM python:${PYTHON_VERSION}-slim AS runtime
# espeak-ng: the dialplans' spoken announcements (fallback) are synthesised with it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends espeak-ng \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/voicebridge \
            --create-home --shell /usr/sbin/nologin voicebridge
COPY --from=build /opt/voicebridge /opt/voicebridge
# HTTP listens on all interfaces of the container; the softphone still places calls only
# for the operator (VOICEBRIDGE_WEBRTC_PUBLIC stays false unless set at run time).
ENV PATH=/opt/voicebridge/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VOICEBRIDGE_HTTP_HOST=0.0.0.0 \
    VOICEBRIDGE_RECORDS_PATH=/var/lib/voicebridge/calls.db
USER voicebridge
WORKDIR /var/lib/voicebridge
VOLUME ["/var/lib/voicebridge"]
EXPOSE 8080/tcp 5060/udp 5060/tcp 5061/tcp 20000-20999/udp
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["voicebridge"]
CMD ["serve"]
