-- Gridloop's PostgreSQL roles, run once by a superuser in the Gridloop database:
--
--   psql -v ON_ERROR_STOP=1 -v intake_password=… -v dispatch_password=… \
--        -v escalation_password=… -v feedback_password=… -v auditor_password=… \
--        -d gridloop -f deploy/postgres/init.sql
--
-- (deploy/postgres/init-roles.sh does exactly that from the environment, as the PostgreSQL
-- image's /docker-entrypoint-initdb.d hook.) Safe to run again: it re-asserts everything and
-- takes the passwords given.
--
-- Each service's role owns its schema (intake, dispatch, escalation, feedback) and reaches no
-- other; the auditor reads every service's schema and writes nothing.

\set ON_ERROR_STOP on
SET client_min_messages = warning;

SELECT format('CREATE ROLE %I', name)
FROM unnest(ARRAY['gridloop_intake', 'gridloop_dispatch', 'gridloop_escalation',
                  'gridloop_feedback', 'gridloop_auditor']) AS name
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = name)
\gexec

-- Each service runs a pool of 10 plus one advisory-lock session per projection.
ALTER ROLE gridloop_intake     LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    CONNECTION LIMIT 40 PASSWORD :'intake_password';
ALTER ROLE gridloop_dispatch   LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    CONNECTION LIMIT 40 PASSWORD :'dispatch_password';
ALTER ROLE gridloop_escalation LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    CONNECTION LIMIT 40 PASSWORD :'escalation_password';
ALTER ROLE gridloop_feedback   LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    CONNECTION LIMIT 40 PASSWORD :'feedback_password';
ALTER ROLE gridloop_auditor    LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    CONNECTION LIMIT 10 PASSWORD :'auditor_password';
ALTER ROLE gridloop_auditor SET default_transaction_read_only = on;

-- Only the roles named here connect to this database. CREATE on it is for rebuilds: a rebuild
-- builds <schema>_rebuild (or <schema>_asof) beside the live schema and renames it into place;
-- the event trigger below keeps every service to schemas named after itself.
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database())
\gexec
SELECT format('GRANT CONNECT, TEMPORARY, CREATE ON DATABASE %I TO %s', current_database(),
              'gridloop_intake, gridloop_dispatch, gridloop_escalation, gridloop_feedback')
\gexec
SELECT format('GRANT CONNECT ON DATABASE %I TO gridloop_auditor', current_database())
\gexec
REVOKE ALL ON SCHEMA public FROM PUBLIC;

CREATE SCHEMA IF NOT EXISTS intake AUTHORIZATION gridloop_intake;
CREATE SCHEMA IF NOT EXISTS dispatch AUTHORIZATION gridloop_dispatch;
CREATE SCHEMA IF NOT EXISTS escalation AUTHORIZATION gridloop_escalation;
CREATE SCHEMA IF NOT EXISTS feedback AUTHORIZATION gridloop_feedback;
ALTER SCHEMA intake OWNER TO gridloop_intake;
ALTER SCHEMA dispatch OWNER TO gridloop_dispatch;
ALTER SCHEMA escalation OWNER TO gridloop_escalation;
ALTER SCHEMA feedback OWNER TO gridloop_feedback;
-- intake's sealed contacts' data keys (wrapped by the master key) live apart from its read model.
CREATE SCHEMA IF NOT EXISTS intake_keys AUTHORIZATION gridloop_intake;
ALTER SCHEMA intake_keys OWNER TO gridloop_intake;
REVOKE ALL ON SCHEMA intake, intake_keys, dispatch, escalation, feedback FROM PUBLIC;

-- The auditor reads what exists now and, through default privileges, whatever the services
-- create later: tables added by a new version, and the schemas a rebuild swaps in.
GRANT USAGE ON SCHEMA intake, dispatch, escalation, feedback TO gridloop_auditor;
GRANT SELECT ON ALL TABLES IN SCHEMA intake, dispatch, escalation, feedback TO gridloop_auditor;
ALTER DEFAULT PRIVILEGES FOR ROLE gridloop_intake GRANT USAGE ON SCHEMAS TO gridloop_auditor;
ALTER DEFAULT PRIVILEGES FOR ROLE gridloop_intake GRANT SELECT ON TABLES TO gridloop_auditor;
ALTER DEFAULT PRIVILEGES FOR ROLE gridloop_dispatch GRANT USAGE ON SCHEMAS TO gridloop_auditor;
ALTER DEFAULT PRIVILEGES FOR ROLE gridloop_dispatch GRANT SELECT ON TABLES TO gridloop_auditor;
ALTER DEFAULT PRIVILEGES FOR ROLE gridloop_escalation GRANT USAGE ON SCHEMAS TO gridloop_auditor;
ALTER DEFAULT PRIVILEGES FOR ROLE gridloop_escalation GRANT SELECT ON TABLES TO gridloop_auditor;
ALTER DEFAULT PRIVILEGES FOR ROLE gridloop_feedback GRANT USAGE ON SCHEMAS TO gridloop_auditor;
ALTER DEFAULT PRIVILEGES FOR ROLE gridloop_feedback GRANT SELECT ON TABLES TO gridloop_auditor;
-- Key material is not the auditor's: no way into intake_keys, whatever the defaults above say.
REVOKE ALL ON SCHEMA intake_keys FROM gridloop_auditor;

-- CREATE on the database would let a service squat another's schema name (say, make
-- dispatch_rebuild so that dispatch's rebuild fails): a service role may create or rename only
-- schemas named after itself.
CREATE OR REPLACE FUNCTION public.gridloop_own_schemas_only() RETURNS event_trigger
LANGUAGE plpgsql AS $$
DECLARE
    service text := substring(current_user FROM '^gridloop_(intake|dispatch|escalation|feedback)$');
    command record;
BEGIN
    IF service IS NULL THEN
        RETURN;
    END IF;
    FOR command IN SELECT * FROM pg_event_trigger_ddl_commands() WHERE object_type = 'schema' LOOP
        IF command.object_identity !~ ('^"?' || service || '(_[a-z0-9_]+)?"?$') THEN
            RAISE EXCEPTION 'role % may only create schemas named %[_…], not %',
                current_user, service, command.object_identity
                USING ERRCODE = 'insufficient_privilege';
        END IF;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION public.gridloop_own_schemas_only() FROM PUBLIC;
DROP EVENT TRIGGER IF EXISTS gridloop_own_schemas_only;
CREATE EVENT TRIGGER gridloop_own_schemas_only ON ddl_command_end
    WHEN TAG IN ('CREATE SCHEMA', 'ALTER SCHEMA')
    EXECUTE FUNCTION public.gridloop_own_schemas_only();
