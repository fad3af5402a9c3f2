#!/bin/sh
# Run once by the postgres image when its data folder is new: the login users Setpoint's processes use.
# The migrations grant each one only what its process needs (workers cannot change desired state).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE ROLE setpoint_worker LOGIN PASSWORD '${SETPOINT_WORKER_PASSWORD}';
CREATE ROLE setpoint_scheduler LOGIN PASSWORD '${SETPOINT_SCHEDULER_PASSWORD}';
CREATE ROLE setpoint_api LOGIN PASSWORD '${SETPOINT_API_PASSWORD}';
SQL
