"""The test-server launcher against real nats-server and postgres processes.

These tests start their own servers (not the session ones) because they kill
and restart them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import stat
import urllib.request
from pathlib import Path

import asyncpg
import nats
import nats.errors
import pytest

from gridloop_events.deploy_security import SERVICES, deployed_servers
from gridloop_events.servers import (
    LocalNats,
    LocalPostgres,
    ServerError,
    nats_server_binary,
    postgres_bin_dir,
    provide_servers,
)

IS_ROOT = os.geteuid() == 0
NOBODY_UID = 65534

pytestmark = pytest.mark.timeout(60)


def _proc_uid(pid: int) -> int:
    return os.stat(f"/proc/{pid}").st_uid


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def _publish(url: str, stream: str, payloads: list[bytes]) -> list[int]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"{stream}.>"])
        return [(await js.publish(f"{stream}.evt", p)).seq for p in payloads]
    finally:
        await nc.close()


async def _stored(url: str, stream: str) -> list[bytes]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        return [
            (await js.get_msg(stream, seq)).data
            for seq in range(info.state.first_seq, info.state.last_seq + 1)
        ]
    finally:
        await nc.close()


# -- NATS ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_local_nats_jetstream_publish_is_acked() -> None:
    with LocalNats() as srv:
        assert srv.url == f"nats://127.0.0.1:{srv.port}"
        assert await _publish(srv.url, "S", [b"one", b"two"]) == [1, 2]
        assert await _stored(srv.url, "S") == [b"one", b"two"]
        data_dir = srv.data_dir
    assert data_dir is not None and not data_dir.exists(), "temp dir not removed"


def test_local_nats_fsyncs_before_ack() -> None:
    with LocalNats() as srv:
        assert "sync_interval: always" in srv.config_path.read_text()
        # Ask the running server too, in case the config line was ignored.
        assert srv.monitor_url is not None
        with urllib.request.urlopen(f"{srv.monitor_url}/varz", timeout=5) as resp:
            varz = json.load(resp)
        assert varz["jetstream"]["config"]["sync_always"] is True


@pytest.mark.asyncio
async def test_local_nats_kill_and_restart_keep_acked_messages() -> None:
    with LocalNats() as srv:
        port, data_dir, old_pid = srv.port, srv.data_dir, srv.pid
        await _publish(srv.url, "K", [b"a", b"b", b"c"])

        srv.kill()
        assert not srv.running and old_pid is not None and not _alive(old_pid)

        srv.restart()
        assert (srv.port, srv.data_dir) == (port, data_dir)
        assert await _stored(srv.url, "K") == [b"a", b"b", b"c"]

        srv.restart(mode="graceful")
        assert await _stored(srv.url, "K") == [b"a", b"b", b"c"]


@pytest.mark.asyncio
async def test_local_nats_pause_blocks_until_resume() -> None:
    with LocalNats() as srv:
        await _publish(srv.url, "P", [b"before"])
        nc = await nats.connect(srv.url)
        try:
            js = nc.jetstream()
            srv.pause()
            with pytest.raises(nats.errors.TimeoutError):
                await js.publish("P.evt", b"while-paused", timeout=0.3)
            srv.resume()
            ack = await js.publish("P.evt", b"after", timeout=5)
            assert ack.stream == "P"
        finally:
            await nc.close()


def test_local_nats_bad_config_error_shows_log(tmp_path: Path) -> None:
    srv = LocalNats(tmp_path / "nats", extra_config="this is { not valid")
    with pytest.raises(ServerError) as info:
        srv.start()
    assert "nats-server" in str(info.value)
    assert "extra_config" in str(info.value) or "error" in str(info.value).lower()
    assert not srv.running


def test_nats_binary_rejects_old_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "nats-server"
    fake.write_text("#!/bin/sh\necho 'nats-server: v2.9.25'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("GRIDLOOP_NATS_SERVER", str(fake))
    with pytest.raises(ServerError, match=r"2\.9\.25.*older"):
        nats_server_binary()


def test_postgres_bin_dir_honours_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRIDLOOP_PG_BIN", str(tmp_path))
    with pytest.raises(ServerError, match="GRIDLOOP_PG_BIN"):
        postgres_bin_dir()


# -- PostgreSQL -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_local_postgres_runs_unprivileged_and_answers() -> None:
    with LocalPostgres() as pg:
        assert pg.pid is not None and pg.cluster_dir is not None
        base = pg.cluster_dir.parent
        if IS_ROOT:
            assert _proc_uid(pg.pid) == NOBODY_UID
            assert pg.cluster_dir.stat().st_uid == NOBODY_UID
            # Only our own folder was opened up, and it stays root's.
            assert base.stat().st_uid == 0
            assert stat.S_IMODE(base.stat().st_mode) == 0o755
            assert stat.S_IMODE(os.stat("/tmp").st_mode) == 0o1777
        else:
            assert _proc_uid(pg.pid) == os.geteuid()

        conn = await asyncpg.connect(pg.url)
        try:
            assert await conn.fetchval("select current_user") == "postgres"
            assert await conn.fetchval("show fsync") == "on"
            assert await conn.fetchval("show max_connections") == "200"
            assert await conn.fetchval("show listen_addresses") == "127.0.0.1"
        finally:
            await conn.close()

        url = pg.create_database("extra_db")
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("select current_database()") == "extra_db"
        finally:
            await conn.close()
    assert not base.exists(), "temp cluster not removed"


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["immediate", "kill"])
async def test_local_postgres_crash_keeps_committed_data(mode: str) -> None:
    with LocalPostgres() as pg:
        port = pg.port
        conn = await asyncpg.connect(pg.url)
        await conn.execute("create table t (v text)")
        await conn.execute("insert into t values ('committed')")
        # An open transaction at crash time must vanish, not half-apply.
        tx = conn.transaction()
        await tx.start()
        await conn.execute("insert into t values ('uncommitted')")

        pg.restart(mode=mode)  # type: ignore[arg-type]
        conn.terminate()
        assert pg.port == port

        conn = await asyncpg.connect(pg.url)
        try:
            rows = await conn.fetch("select v from t")
        finally:
            await conn.close()
        assert [r["v"] for r in rows] == ["committed"]


@pytest.mark.asyncio
async def test_local_postgres_persistent_dir_survives_restart(tmp_path: Path) -> None:
    # pytest's tmp_path sits under a 0700 folder, so as root this exercises
    # the relocation of the cluster to /var/tmp.
    data_dir = tmp_path / "run" / "postgres"
    pg = LocalPostgres(data_dir)
    try:
        pg.start()
        conn = await asyncpg.connect(pg.url)
        await conn.execute("create table kept (v int); insert into kept values (42)")
        await conn.close()
        pg.stop()
        assert pg.cluster_dir is not None and (pg.cluster_dir / "PG_VERSION").exists()
        if IS_ROOT:
            assert str(pg.cluster_dir).startswith("/var/tmp/gridloop-pg-")
            assert (data_dir / "pgdata").resolve() == pg.cluster_dir
        else:
            assert pg.cluster_dir == data_dir.resolve() / "pgdata"

        again = LocalPostgres(data_dir)  # a later `make run`
        with again:
            assert again.cluster_dir == pg.cluster_dir
            conn = await asyncpg.connect(again.url)
            try:
                assert await conn.fetchval("select v from kept") == 42
            finally:
                await conn.close()
        assert (data_dir / "postgres.log").exists()
    finally:
        pg.stop()
        if pg.cluster_dir is not None and str(pg.cluster_dir).startswith("/var/tmp/"):
            shutil.rmtree(pg.cluster_dir.parent, ignore_errors=True)


# -- fixture policy ---------------------------------------------------------------


def test_provide_servers_uses_env_urls_without_starting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_URL", "nats://127.0.0.1:1")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@127.0.0.1:1/db")
    # backend="docker" would fail here (no engine): proves nothing is started.
    with provide_servers(backend="docker") as found:
        assert found.nats_url == "nats://127.0.0.1:1"
        assert found.database_url == "postgresql://u@127.0.0.1:1/db"
        assert (found.nats_backend, found.postgres_backend) == ("env", "env")
        assert found.nats is found.postgres is None
        assert found.nats_container is found.postgres_container is None


@pytest.mark.asyncio
async def test_provide_servers_local_starts_and_cleans_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NATS_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with provide_servers(backend="local") as found:
        assert (found.nats_backend, found.postgres_backend) == ("local", "local")
        assert found.nats is not None and found.postgres is not None
        pids = [found.nats.pid, found.postgres.pid]
        assert await _publish(found.nats_url, "L", [b"x"]) == [1]
        conn = await asyncpg.connect(found.database_url)
        assert await conn.fetchval("select 1") == 1
        await conn.close()
    assert not any(_alive(pid) for pid in pids if pid is not None)


@pytest.mark.asyncio
async def test_fresh_database_is_empty_and_private(
    fresh_database: str, database_url: str, fresh_stream_prefix: str
) -> None:
    assert fresh_database != database_url
    assert re.fullmatch(r"[a-z0-9_]+", fresh_stream_prefix)
    conn = await asyncpg.connect(fresh_database)
    try:
        assert await conn.fetchval("select current_database()") != "postgres"
        tables = await conn.fetchval(
            "select count(*) from information_schema.tables where table_schema = 'public'"
        )
        assert tables == 0
        await conn.execute("create table mine (id int)")
    finally:
        await conn.close()


# -- servers configured as deployed -----------------------------------------------


@pytest.mark.asyncio
async def test_deployed_servers_apply_deploys_users_and_roles_then_clean_up(
    database_url: str,
) -> None:
    with deployed_servers(database_url) as deployed:
        pid = deployed.nats.pid
        name = deployed.database_url.rsplit("/", 1)[1]
        # accounts.conf's passwords reach the server from its environment: no login, no entry.
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(deployed.nats_url, allow_reconnect=False,
                               max_reconnect_attempts=0)
        nc = await nats.connect(deployed.nats_url_as("feedback"),
                                inbox_prefix="_INBOX_feedback")
        await nc.close()
        env = deployed.service_env()
        assert set(env) == {f"GRIDLOOP_{s.upper()}_{what}_URL" for s in SERVICES
                            for what in ("NATS", "DATABASE")}
        conn = await asyncpg.connect(env["GRIDLOOP_FEEDBACK_DATABASE_URL"])
        try:
            assert await conn.fetchval("select current_user") == "gridloop_feedback"
            assert await conn.fetchval("select has_schema_privilege('feedback', 'CREATE')")
            assert not await conn.fetchval("select has_schema_privilege('intake', 'USAGE')")
        finally:
            await conn.close()
    assert pid is not None and not _alive(pid)
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("select count(*) from pg_database where datname = $1",
                                   name) == 0
    finally:
        await conn.close()


def test_local_nats_passes_its_env_to_the_server_for_config_variables(tmp_path: Path) -> None:
    # The variable exists only in the server's environment, not ours: a missing one fails.
    config = 'authorization { user: u, password: $GRIDLOOP_TEST_PASSWORD }'
    with LocalNats(tmp_path / "ok", extra_config=config,
                   env={"GRIDLOOP_TEST_PASSWORD": "s3cret"}) as server:
        async def login() -> None:
            nc = await nats.connect(server.url.replace("//", "//u:s3cret@"))
            await nc.close()
        asyncio.run(login())
    with pytest.raises(ServerError, match="GRIDLOOP_TEST_PASSWORD"):
        LocalNats(tmp_path / "missing", extra_config=config).start()
