# docker-compose.yml's `prometheus` (prom/prometheus) and `pushgateway` (prom/pushgateway) made from Debian's
# prometheus (2.42) and prometheus-pushgateway (1.4) on the local base (docker-compose.podman.yml): one
# image per target, each with its program as the entrypoint, as the official images have it, so that
# compose's `command:` gives its arguments. Run as nobody, as they are.
ARG BASE_IMAGE
FROM ${BASE_IMAGE} AS prometheus
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o nobody -g nogroup /prometheus
USER nobody
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]

FROM ${BASE_IMAGE} AS pushgateway
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus-pushgateway \
    && rm -rf /var/lib/apt/lists/*
USER nobody
EXPOSE 9091
ENTRYPOINT ["/usr/bin/prometheus-pushgateway"]
