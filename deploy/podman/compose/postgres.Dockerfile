# docker-compose.yml's `postgres` (postgres:16) made from Debian's PostgreSQL 15 on the local base, for
# machines that cannot pull it (docker-compose.podman.yml). What compose relies on behaves as the official
# image's: POSTGRES_USER / POSTGRES_PASSWORD make the superuser of a new cluster in /var/lib/postgresql/data,
# the *.sql and *.sh of /docker-entrypoint-initdb.d run once on it, the server listens on every address with
# password authentication, and `pg_isready` is on PATH. PostgreSQL 15, not 16: bookworm's.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data \
    && install -d -o postgres -g postgres /var/run/postgresql /docker-entrypoint-initdb.d

ENV PATH=/usr/lib/postgresql/15/bin:${PATH} \
    PGDATA=/var/lib/postgresql/data
COPY --chmod=0755 deploy/podman/compose/postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
