# docker-compose.yml's `nginx` (nginx:1.27) made from Debian's nginx (1.22) on the local base
# (docker-compose.podman.yml): compose mounts deploy/nginx/compose.conf as /etc/nginx/nginx.conf, which
# keeps its temporary files in /var/cache/nginx, as the official image has it; curl for the health check.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx-light curl \
    && rm -rf /var/lib/apt/lists/* \
    && install -d /var/cache/nginx \
    && ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
