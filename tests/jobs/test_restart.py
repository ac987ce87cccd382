"""Across a restart of the service: finished results stay retrievable, jobs that were queued or running
are reported failed, and a PACS that is down gives the job a clear error. Also the store's retention."""

from __future__ import annotations

import time

import pytest

from app.jobs.store import JobStore
from benchmarks.common import free_port
from tests.conftest import start_server
from tests.dicom_fixtures import mprage_files, zip_files
from tests.jobs.test_jobs_api import wait


def test_a_restart_fails_interrupted_jobs_and_keeps_finished_results(tmp_path):
    from tests.helpers import make_threshold_model

    models = tmp_path / "models"
    make_threshold_model(models, name="bright-t1", modality="t1")
    closed_port = free_port()  # nothing listens there: the PACS is "down"
    env = {
        "SEG_MODELS_DIR": str(models),
        "SEG_DEFAULT_MODEL": "bright-t1",
        "SEG_MAX_UPLOAD_MB": "64",
        "SEG_JOBS_DIR": str(tmp_path / "jobs"),
        "SEG_MAX_CONCURRENT_INFERENCES": "1",
        "SEG_PACS_URL": f"http://127.0.0.1:{closed_port}/dicom-web",
        "SEG_PACS_RETRIES": "1",
    }
    upload = {"t1": ("s.zip", zip_files(mprage_files()[60:120], prefix="t1/"))}  # 60 contiguous slices
    first = start_server(tmp_path / "first", env)
    try:
        with first.client() as client:
            done = client.post("/jobs", files=upload)
            finished = wait(client, done.headers["location"])
            assert finished["state"] == "succeeded"
            result = client.get(f"{done.headers['location']}/result").content
            running = client.post("/jobs", files=upload).headers["location"]
            queued = client.post("/jobs", files=upload).headers["location"]
            deadline = time.monotonic() + 60
            while client.get(running).json()["state"] != "running":
                assert time.monotonic() < deadline, "the job never started"
                time.sleep(0.02)
            assert client.get(queued).json()["state"] in ("queued", "running")
    finally:
        first.process.kill()  # a crash, not a graceful stop
        first.process.wait(timeout=20)
    second = start_server(tmp_path / "second", env)
    try:
        with second.client() as client:
            again = client.get(done.headers["location"])
            assert again.json()["state"] == "succeeded"
            assert client.get(f"{done.headers['location']}/result").content == result
            for location in (running, queued):
                record = client.get(location).json()
                assert record["state"] == "failed", record
                assert record["error"]["error"] == "interrupted" and "submit it again" in record["error"]["detail"]
                assert client.get(f"{location}/result").status_code == 409
            # The PACS is down: the job fails with a sentence naming it, not a stack trace.
            r = client.post("/dicomweb/studies/1.2.826.0.1.3680043.2.1/segment")
            assert r.status_code == 202
            job = wait(client, r.headers["location"], timeout=60)
    finally:
        second.process.terminate()
        second.process.wait(timeout=20)
    assert job["state"] == "failed" and job["error"]["error"] == "pacs_unreachable", job
    assert f"127.0.0.1:{closed_port}" in job["error"]["detail"] and "SEG_PACS_URL" in job["error"]["detail"]
    left = sorted(p.name for p in (tmp_path / "jobs").iterdir() if p.is_dir())
    assert left == [finished["id"]]  # failed jobs keep their record, not their files


def test_retention_deletes_old_and_excess_finished_jobs_with_their_files(tmp_path):
    store = JobStore(tmp_path)
    jobs = [store.create("upload", "m", 1, {}) for _ in range(5)]
    for job in jobs[:4]:
        (store.folder(job.id) / "mask.nii.gz").write_bytes(b"x")
        assert store.finish(job.id, "succeeded")
    store.update(jobs[0].id, created=time.time() - 7200)  # two hours old
    assert store.clean(max_age_seconds=3600, max_records=3) == 2  # the old one, then the oldest beyond 3
    kept = {j.id for j in store.list()}
    assert kept == {j.id for j in jobs[2:]}  # the active job is never removed
    assert not store.folder(jobs[0].id).exists() and not store.folder(jobs[1].id).exists()
    assert store.folder(jobs[2].id).exists()
    assert not store.finish(jobs[2].id, "cancelled")  # a final state is final
    assert store.recover() == 1 and store.get(jobs[4].id).error["error"] == "interrupted"
    store.close()


@pytest.mark.parametrize("state", ["queued", "running"])
def test_recover_marks_each_active_state_failed(tmp_path, state):
    store = JobStore(tmp_path)
    job = store.create("upload", None, None, {})
    store.update(job.id, state=state)
    store.close()
    reopened = JobStore(tmp_path)
    assert reopened.recover() == 1
    assert reopened.get(job.id).state == "failed" and not reopened.folder(job.id).exists()
    reopened.close()
