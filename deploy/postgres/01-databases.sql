-- Run once by the postgres image on an empty data volume (/docker-entrypoint-initdb.d).
-- The service's data and Airflow's metadata live in separate databases with separate owners, so that
-- neither can read or drop the other's tables, and each can be backed up or reset on its own.
-- Local development passwords: change them (and docker-compose.yml) before exposing the stack anywhere.

CREATE ROLE retail LOGIN PASSWORD 'retail';
CREATE DATABASE retail OWNER retail;

CREATE ROLE airflow LOGIN PASSWORD 'airflow';
CREATE DATABASE airflow OWNER airflow;
