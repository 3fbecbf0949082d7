"""Issue 16 §3: a training run's page answers like the API: 404 unless the run is in one of your projects."""

from __future__ import annotations

from tests.api.test_visibility import make_run
from tests.factories import make_project, make_user
from tests.ui.test_pages import login


def test_training_run_page_is_404_for_unknown_ids_and_other_projects(client, db, tmp_path):
    member, outsider = make_user(db, "annotator"), make_user(db, "curator")
    project = make_project(db, (member, "annotator"))
    make_project(db, (outsider, "curator"))
    run = make_run(db, project.id, tmp_path / "run")
    login(client, outsider)
    assert client.get(f"/ui/training/{run.id}").status_code == 404
    assert client.get(f"/ui/training/{run.id + 1000}").status_code == 404


def test_training_run_page_opens_for_members_of_its_project(client, db, tmp_path):
    member = make_user(db, "annotator")
    run = make_run(db, make_project(db, (member, "annotator")).id, tmp_path / "run")
    login(client, member)
    assert client.get(f"/ui/training/{run.id}").status_code == 200
