# docker-compose.yml's `rabbitmq` (rabbitmq:3-management) made from Debian's rabbitmq-server (3.10) on the
# local base (docker-compose.podman.yml): the management plugin on, guest/guest allowed from other
# containers (as the official image allows), `rabbitmq-diagnostics` on PATH for the health check.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends rabbitmq-server \
    && rm -rf /var/lib/apt/lists/* \
    && printf 'loopback_users = none\nlisteners.tcp.default = 5672\nmanagement.tcp.port = 15672\n' \
       > /etc/rabbitmq/rabbitmq.conf \
    && printf '[rabbitmq_management].\n' > /etc/rabbitmq/enabled_plugins \
    && chown -R rabbitmq:rabbitmq /etc/rabbitmq /var/lib/rabbitmq
# Debian's wrappers switch to the rabbitmq user when run as root (the health check runs as root too).
EXPOSE 5672 15672
CMD ["rabbitmq-server"]
