#!/usr/bin/env bash
# Run once by the postgres image's entrypoint when the database is created
# (docker-entrypoint-initdb.d), as POSTGRES_USER in POSTGRES_DB:
#
# - app_owner (no login) owns the application's tables;
# - tablecast logs in with REPLICATION and is a member of app_owner, so it
#   may add those tables to the publication it creates and manages; it may
#   create that publication (CREATE on the database);
# - only tablecast may write custom-topic messages (pg_logical_emit_message,
#   which PostgreSQL grants to every role by default): list any other role
#   that may in TABLECAST_TOPIC_ROLES and grant it the same;
# - the demo table public.orders is created as app_owner when DEMO_SQL names
#   a file (compose mounts scripts/demo.sql there).
#
# `tablecast doctor` then reports no failure and no warning but for the
# slot and publication that the first run creates.
set -euo pipefail
: "${POSTGRES_TABLECAST_PASSWORD:?the tablecast role needs a password}"

psql -v ON_ERROR_STOP=1 -v pw="$POSTGRES_TABLECAST_PASSWORD" \
	--username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
CREATE ROLE app_owner NOLOGIN;
GRANT USAGE, CREATE ON SCHEMA public TO app_owner;
CREATE ROLE tablecast LOGIN REPLICATION PASSWORD :'pw';
GRANT app_owner TO tablecast;
SELECT format('GRANT CREATE ON DATABASE %I TO tablecast', current_database()) \gexec
REVOKE EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, text) TO tablecast;
SQL

if [[ -n "${DEMO_SQL:-}" && -r "$DEMO_SQL" ]]; then
	psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
		-c 'SET ROLE app_owner' -f "$DEMO_SQL"
fi
