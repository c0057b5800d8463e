# docker-compose.yml's `s3` (motoserver/moto:5.1.0) made on the local base with moto's server from PyPI, at
# the image's version (docker-compose.podman.yml): moto_server on every address, port 5000.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN pip install --no-cache-dir "moto[server]==5.1.0"
EXPOSE 5000
ENTRYPOINT ["moto_server", "-H", "0.0.0.0", "-p", "5000"]
