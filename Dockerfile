# One image for every portslice service: planner web, worker, beat, the gateway and agents.
FROM python:3.11-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nftables iproute2 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir .
ENV PORTSLICE_VAR_DIR=/var/lib/portslice PYTHONUNBUFFERED=1
