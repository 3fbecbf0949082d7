"""The evaluation pages: an evaluation started from its form (and refusals naming the field); a judged evaluation,
run by the real job with the fake teacher, shows its win-rate bars with their intervals, its categories and
lengths, and prompt by prompt both answers with the judge's rationale in both orders, filtered by outcome;
hostile text in prompts, answers and rationales stays text; other projects' evaluations are 404; the training
run page lists its evaluations and refuses "evaluate against base" by name."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.config import get_settings
from app.evaluation import service as evaluations
from app.evaluation.models import Evaluation, EvaluationSystem
from app.evaluation.schemas import EvaluationCreate
from app.jobs.models import Job
from app.projects import service as projects
from app.records.schemas import RecordFilter
from app.snapshots import service as snapshots
from app.training.models import TrainingRun
from app.ui.pages.evaluations import default_rubric
from tests.conftest import serve_from
from tests.factories import job_row, make_dataset, make_project, make_records, make_user
from tests.ui.test_pages import login
from workers.runner import run_job

SHOTS = os.environ.get("IF_UI_SCREENSHOTS")
pytestmark = pytest.mark.browser

HOSTILE_PROMPT = '<img src=x onerror="window.__pwned=1">Describe the moon to a child.'
HOSTILE_ANSWER = "<script>window.__pwned=1</script>The moon is a rock."
HOSTILE_RATIONALE = '<b onmouseover="window.__pwned=1">bold</b> Assistant A is better.'


def _two_teachers(monkeypatch: pytest.MonkeyPatch, teacher: Any) -> None:
    """A second teacher on the same fake server under another model: its answers are cached apart."""
    config = json.loads(teacher.config)
    config.append({**config[0], "name": "fake2", "model": "fake-model-2"})
    monkeypatch.setattr(get_settings(), "teachers", json.dumps(config))


def _form(token: str, **changes: str) -> dict[str, str]:
    return {
        "csrf_token": token,
        "system_0": "teacher:fake",
        "system_name_0": "alpha",
        "system_1": "teacher:fake",
        "system_name_1": "beta",
        "judge_teacher": "fake",
        "split": "all",
        "max_new_tokens": "256",
        "greedy": "on",
        **changes,
    }


# --------------------------------------------------------------------------------------------------
# The form


def test_an_evaluation_is_created_from_the_form_in_the_browser(
    client: Any, db: Session, teacher: Any, browser_page: Any
):
    curator = make_user(db, "curator")
    project = make_project(db, (curator, "curator"))
    dataset = make_dataset(db, project, name="support answers")
    make_records(db, dataset, 3)
    login(client, curator)
    serve_from(client, browser_page)
    page = browser_page
    page.goto(f"http://testserver/ui/projects/{project.id}")
    page.click('[data-role="evaluations-link"]')
    page.click('[data-role="new-evaluation"]')
    assert page.locator('textarea[name="rubric"]').input_value() == default_rubric("en")
    page.select_option('select[name="system_0"]', "teacher:fake")
    page.fill('input[name="system_name_0"]', "alpha")
    page.select_option('select[name="system_1"]', "teacher:fake")
    page.fill('input[name="system_name_1"]', "beta")
    page.select_option('select[name="prompt_set"]', f"dataset:{dataset.id}")
    page.fill('input[name="max_prompts"]', "2")
    page.check('input[name="scores"]')
    page.click('[data-role="evaluation-form"] button[type=submit]')
    page.locator("#evaluation").wait_for()
    evaluation = db.scalars(select(Evaluation).where(Evaluation.project_id == project.id)).one()
    # (serve_from follows the redirect in-process: the address bar keeps the form's URL)
    assert page.locator("h1").inner_text().startswith(f"Evaluation #{evaluation.id}")
    assert page.locator('[data-role="status"]').inner_text() in ("queued", "running")
    assert page.locator('[data-role="system"]').all_inner_texts()[0].startswith("alpha")
    names = db.scalars(
        select(EvaluationSystem.name)
        .where(EvaluationSystem.evaluation_id == evaluation.id)
        .order_by(EvaluationSystem.position)
    ).all()
    assert names == ["alpha", "beta"]
    assert evaluation.dataset_id == dataset.id and evaluation.judge_teacher == "fake"
    # The rubric left as it was prefilled is the built-in one (in the set's language), not a copy of it.
    assert evaluation.params["rubric"] is None
    assert evaluation.params["max_prompts"] == 2 and evaluation.params["scores"] is True
    page.goto(f"http://testserver/ui/projects/{project.id}/evaluations")
    assert "alpha, beta" in page.locator(f'[data-evaluation-id="{evaluation.id}"]').inner_text()


@pytest.mark.parametrize(
    ("changes", "words", "field"),
    [
        ({"system_1": ""}, "at least 2 systems", "systems"),
        ({"system_1": "teacher:ghost"}, "System 2: ", "system_1"),
        ({"system_0": "wizard:x"}, "System 1: unknown system", "system_0"),
        ({"max_new_tokens": "lots"}, "generation.max_new_tokens", "generation.max_new_tokens"),
        ({"budget_usd": "-1"}, "budget_usd", "budget_usd"),
        ({"prompt_set": ""}, "Prompt set", "prompt_set"),
        ({"split": "validation"}, "split=validation needs a snapshot", "split"),
        ({"judge_teacher": "nobody"}, "judge_teacher", "judge_teacher"),
        ({"system_name_1": "alpha"}, "two systems are named", "systems"),
    ],
)
def test_a_refused_evaluation_form_names_the_field_keeps_what_was_typed_and_stores_nothing(
    client: Any, db: Session, teacher: Any, changes: dict[str, str], words: str, field: str
):
    curator = make_user(db, "curator")
    project = make_project(db, (curator, "curator"))
    dataset = make_dataset(db, project)
    make_records(db, dataset, 2)
    token = login(client, curator)
    data = _form(token, **{"prompt_set": f"dataset:{dataset.id}", "name": "my try", **changes})
    response = client.post(f"/ui/projects/{project.id}/evaluations/new", data=data, follow_redirects=False)
    assert response.status_code == 422, response.text
    assert words in response.text
    assert f'data-field="{field}"' in response.text
    assert 'value="my try"' in response.text
    assert db.scalar(select(func.count()).select_from(Evaluation)) == 0


# --------------------------------------------------------------------------------------------------
# A judged evaluation


def _judged(committed: Any, teacher: Any) -> tuple[int, Any]:
    """alpha (teacher fake) against beta (teacher fake2) on six prompts in two categories, judged by the fake
    teacher's default judge (the longer answer wins). alpha's answer to the moon prompt is short and hostile
    (a loss), to the poem prompt long (a win); the other prompts get the same answer from both (ties). One
    order of one comparison gets a hostile rationale."""
    with Session(committed, expire_on_commit=False) as db:
        curator = make_user(db, "curator")
        dataset = make_dataset(db, make_project(db, (curator, "curator")), name="eval prompts")
        for text, label in [
            (HOSTILE_PROMPT, "writing"),
            ("Write a long poem about autumn rain.", "writing"),
            ("Summarise the water cycle.", "writing"),
            ("What is 17 times 23?", "math"),
            ("Explain why the square root of 2 is irrational.", "math"),
            ("How many primes are below 30?", "math"),
        ]:
            make_records(db, dataset, 1, instruction=text, output="", label=label)
        db.commit()
        db.expunge(curator)
        dataset_id = dataset.id
    teacher.script_response("Describe the moon", HOSTILE_ANSWER, times=1)  # alpha answers first ...
    teacher.script_response(
        "Describe the moon", " ".join(["The moon circles the earth."] * 30), times=1
    )  # beta
    teacher.script_response(
        "long poem about autumn", " ".join(["Rain falls softly on the roofs."] * 80), times=1
    )
    # Only a judge's request has the question right before the first answer: one order of the water cycle
    # comparison (a tie either way: the two orders then disagree).
    judge_request = "Summarise the water cycle.\n\n[The Start of Assistant A's Answer]"
    teacher.script_response(judge_request, f"{HOSTILE_RATIONALE}\n\n[[A]]", times=1)
    systems = [
        {"kind": "teacher", "teacher": "fake", "name": "alpha"},
        {"kind": "teacher", "teacher": "fake2", "name": "beta"},
    ]
    with Session(committed) as db:
        body = EvaluationCreate(dataset_id=dataset_id, systems=systems, judge_teacher="fake")  # type: ignore[arg-type]
        ev = evaluations.create_evaluation(db=db, user=db.merge(curator), body=body)
        evaluation_id, job_id = ev.id, ev.job_id
    # The real job runner, in a thread of its own: playwright's sync API keeps an event loop running in this one.
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(run_job, job_id).result() == "succeeded", job_row(committed, job_id).error
    return evaluation_id, curator


def _overall(committed: Any, evaluation_id: int) -> dict[str, Any]:
    with Session(committed) as db:
        ev = db.get(Evaluation, evaluation_id)
        assert ev is not None
        return next(r for r in ev.results["pairwise"]["win_rates"] if r["category"] is None)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_judged_evaluation_shows_bars_intervals_categories_and_both_rationales_filtered_by_outcome(
    committed: Any, client: Any, teacher: Any, monkeypatch: pytest.MonkeyPatch, browser_page: Any
):
    _two_teachers(monkeypatch, teacher)
    evaluation_id, curator = _judged(committed, teacher)
    overall = _overall(committed, evaluation_id)
    assert (overall["wins"], overall["losses"]) == (1, 1)
    login(client, curator)
    serve_from(client, browser_page)
    page = browser_page
    page.goto(f"http://testserver/ui/evaluations/{evaluation_id}")
    assert page.locator('[data-role="status"]').inner_text() == "succeeded"
    bar = page.locator('[data-role="overall-chart"] [data-role="rate-bar"]')
    assert bar.count() == 1
    assert bar.get_attribute("data-label") == "alpha vs beta"
    rate, low, high = (float(bar.get_attribute(f"data-{k}") or "nan") for k in ("rate", "low", "high"))
    assert (rate, low, high) == (overall["win_rate"], overall["ci_low"], overall["ci_high"])
    assert low <= rate == 0.5 <= high
    assert bar.locator("line.ci").count() == 3  # the whisker and its two ends
    pair_row = page.locator('[data-role="pair-row"]').inner_text()
    assert "0.50" in pair_row and f"[{low:.2f}, {high:.2f}]" in pair_row
    categories = page.locator('[data-role="category-row"]')
    assert sorted(categories.evaluate_all("rows => rows.map(r => r.dataset.category)")) == ["math", "writing"]
    assert page.locator('[data-role="category-chart"] [data-role="rate-bar"]').count() == 2
    assert page.locator('[data-role="lengths"] tbody tr').count() == 2
    shot(page, "evaluation.png")

    comparisons = page.locator('[data-role="comparison"]')
    assert comparisons.count() == 6
    for i in range(6):
        c = comparisons.nth(i)
        assert c.locator('[data-role="answer-a"]').inner_text().strip()
        assert c.locator('[data-role="answer-b"]').inner_text().strip()
        assert c.locator('[data-role="judgement"]').count() == 2  # both orders
    moon = page.locator('[data-role="comparison"]', has_text="Describe the moon")
    assert moon.get_attribute("data-outcome") == "loss"
    # Hostile text is shown as text: nothing of it became an element or ran.
    assert moon.locator('[data-role="prompt"]').inner_text() == HOSTILE_PROMPT
    assert moon.locator('[data-role="answer-a"]').inner_text() == HOSTILE_ANSWER
    assert HOSTILE_RATIONALE in page.locator('[data-role="rationale"]').all_inner_texts()
    assert page.locator("main img, main script, b[onmouseover]").count() == 0
    assert page.evaluate("() => window.__pwned === undefined")

    # The outcome filter applies as soon as it changes (the page reloads filtered, with the filter kept).
    page.select_option('select[name="outcome"]', "loss")
    page.wait_for_url("**outcome=loss**")
    assert comparisons.count() == 1
    assert comparisons.first.get_attribute("data-outcome") == "loss"
    assert "Describe the moon" in comparisons.first.inner_text()
    page.select_option('select[name="outcome"]', "tie")
    page.wait_for_url("**outcome=tie**")
    assert comparisons.count() == overall["ties"] == 4
    assert set(comparisons.evaluate_all("cs => cs.map(c => c.dataset.outcome)")) == {"tie"}
    page.select_option('select[name="category"]', "math")
    page.wait_for_url("**category=math**")
    assert comparisons.count() == 3
    assert page.locator('select[name="outcome"]').input_value() == "tie"


def shot(page: Any, name: str) -> None:
    """Refresh docs/screenshots when IF_UI_SCREENSHOTS names the folder."""
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / name), full_page=True)


# --------------------------------------------------------------------------------------------------
# Who sees what; the training run page


def _queued_evaluation(db: Session, curator: Any, project: Any, systems: list[dict[str, Any]]) -> Evaluation:
    dataset = make_dataset(db, project)
    make_records(db, dataset, 2)
    body = EvaluationCreate.model_validate(
        {"dataset_id": dataset.id, "systems": systems, "judge_teacher": "fake"}
    )
    return evaluations.create_evaluation(db=db, user=curator, body=body)


TEACHERS = [
    {"kind": "teacher", "teacher": "fake", "name": "a"},
    {"kind": "teacher", "teacher": "fake", "name": "b"},
]


def test_other_projects_evaluations_are_404_and_not_listed(client: Any, db: Session, teacher: Any):
    owner, outsider = make_user(db, "curator"), make_user(db, "curator")
    project = make_project(db, (owner, "curator"))
    theirs = make_project(db, (outsider, "curator"))
    evaluation = _queued_evaluation(db, owner, project, TEACHERS)
    login(client, outsider)
    for url in (
        f"/ui/evaluations/{evaluation.id}",
        f"/ui/projects/{project.id}/evaluations",
        f"/ui/projects/{project.id}/evaluations/new",
        "/ui/evaluations/999999",
    ):
        response = client.get(url)
        assert response.status_code == 404, url
        assert evaluation.name not in response.text
    own_list = client.get(f"/ui/projects/{theirs.id}/evaluations")
    assert own_list.status_code == 200 and f'data-evaluation-id="{evaluation.id}"' not in own_list.text
    # An annotator of the project reads it, without the export (the answers hold the prompt set's data).
    annotator = make_user(db, "annotator")
    projects.add_member(db=db, user=owner, project_id=project.id, user_id=annotator.id, role="annotator")
    login(client, annotator)
    seen = client.get(f"/ui/evaluations/{evaluation.id}")
    assert (
        seen.status_code == 200 and 'data-role="export"' not in seen.text and "data-action" not in seen.text
    )


def _succeeded_run(db: Session, curator: Any, project: Any, tmp_path: Path) -> TrainingRun:
    """A run as a finished training job leaves it: succeeded, its adapter folder written."""
    dataset = make_dataset(db, project)
    make_records(db, dataset, 3, status="accepted")
    snap = snapshots.create_snapshot(
        db=db,
        user=curator,
        dataset_id=dataset.id,
        name="s",
        description="",
        flt=RecordFilter(status=["accepted"]),
    )
    job = Job(project_id=project.id, kind="train", queue="gpu", params={}, status="succeeded")
    db.add(job)
    db.flush()
    (tmp_path / "adapter").mkdir()
    run = TrainingRun(
        project_id=project.id,
        snapshot_id=snap.id,
        job_id=job.id,
        base_model="no-such-model",
        method="lora",
        config={"val_fraction": 0.2, "seed": 3},
        artifacts_dir=str(tmp_path),
    )
    db.add(run)
    db.flush()
    return run


def test_a_run_page_lists_its_evaluations_and_a_refused_evaluate_against_base_names_the_field(
    client: Any, db: Session, teacher: Any, tmp_path: Path
):
    curator = make_user(db, "curator")
    project = make_project(db, (curator, "curator"))
    run = _succeeded_run(db, curator, project, tmp_path)
    evaluation = _queued_evaluation(
        db, curator, project, [{"kind": "run", "training_run_id": run.id}, TEACHERS[0]]
    )
    token = login(client, curator)
    page = client.get(f"/ui/training/{run.id}")
    assert page.status_code == 200
    assert f'href="/ui/evaluations/{evaluation.id}"' in page.text
    assert 'data-role="evaluate-against-base"' in page.text
    before = db.scalar(select(func.count()).select_from(Evaluation))
    # Its base model is not in the models directory: refused, naming the base system's field.
    refused = client.post(
        f"/ui/training/{run.id}/evaluate-against-base",
        data={"csrf_token": token, "judge_teacher": "fake", "split": ""},
        follow_redirects=False,
    )
    assert refused.status_code == 422
    assert "systems.1.base_model" in refused.text and 'data-role="eval-error"' in refused.text
    unknown_judge = client.post(
        f"/ui/training/{run.id}/evaluate-against-base",
        data={"csrf_token": token, "judge_teacher": "", "max_prompts": "0"},
        follow_redirects=False,
    )
    assert unknown_judge.status_code == 422 and "judge_teacher" in unknown_judge.text
    assert db.scalar(select(func.count()).select_from(Evaluation)) == before


def _win_rate(category: str | None, share_a_longer: float) -> dict[str, Any]:
    return {
        "system_a": "tuned",
        "system_b": "base",
        "category": category,
        "n": 40,
        "wins": 30,
        "ties": 0,
        "losses": 10,
        "unparseable": 0,
        "teacher_errors": 0,
        "consistent": 40,
        "win_rate": 0.75,
        "ci_low": 0.6,
        "ci_high": 0.88,
        "lc_win_rate": 0.52,
        "lc_ci_low": 0.2,
        "lc_ci_high": 0.85,
        "length_coef": 1.3,
        "mean_tokens_a": 300.0,
        "mean_tokens_b": 90.0,
        "share_a_longer": share_a_longer,
    }


@pytest.mark.parametrize(
    ("share", "warned"), [(1.0, True), (0.95, True), (0.05, True), (0.75, False), (0.3, False)]
)
def test_the_length_controlled_figure_is_called_an_extrapolation_when_one_system_is_almost_always_longer(
    share: float, warned: bool
):
    from app.ui.pages.evaluations import report

    results = {
        "pairwise": {
            "win_rates": [_win_rate(None, share)],
            "lengths": [],
            "confidence": 0.95,
            "resamples": 1000,
        }
    }
    shown = report(results)
    assert [p.extrapolated for p in shown["pairs"]] == [warned]
    (bar,) = shown["chart"].bars
    # The whisker spans the interval on the same 0..1 axis as the bar; the length-controlled tick sits at 0.52.
    x0, width = shown["chart"].x0, shown["chart"].plot_w
    assert (bar.low_x, bar.high_x, bar.lc_x) == pytest.approx(
        (x0 + 0.6 * width, x0 + 0.88 * width, x0 + 0.52 * width)
    )
    assert bar.w == pytest.approx(0.75 * width)


def test_validation_loss_decontamination_and_an_extrapolated_lc_figure_are_shown(
    client: Any, db: Session, teacher: Any
):
    """Results as the job stores them for a trained system (app/evaluation/jobs.py: validation per system,
    decontamination per training snapshot), read back by the page."""
    curator = make_user(db, "curator")
    project = make_project(db, (curator, "curator"))
    evaluation = _queued_evaluation(db, curator, project, TEACHERS)
    copy = "<script>window.__pwned=1</script>Name three primes below ten, please."
    evaluation.results = {
        "systems": ["a", "b"],
        "prompts": 40,
        "pairwise": {
            "win_rates": [_win_rate(None, 1.0)],
            "lengths": [],
            "seed": 0,
            "resamples": 1000,
            "confidence": 0.95,
        },
        "validation": {"a": {"loss": 1.2345, "perplexity": 3.437, "records": 12, "training_run_id": 7}},
        "decontamination": {
            "ngram": 13,
            "threshold": 0.8,
            "snapshots": [
                {
                    "snapshot_id": 5,
                    "systems": ["a"],
                    "records_scanned": 120,
                    "copies": 1,
                    "prompts_leaked": 1,
                    "leaks": [
                        {
                            "prompt_id": "3",
                            "prompt": "Name three primes below ten.",
                            "copies": [{"record_id": 99, "text": copy, "method": "rouge_l", "score": 0.91}],
                        }
                    ],
                }
            ],
        },
    }
    job = db.get(Job, evaluation.job_id)
    assert job is not None
    job.status = "succeeded"
    db.flush()
    login(client, curator)
    html = client.get(f"/ui/evaluations/{evaluation.id}").text
    assert 'data-role="lc-warning"' in html and "wrote the longer answer on 100% of prompts" in html
    assert "1.2345" in html and "3.437" in html and 'href="/ui/training/7"' in html
    assert html.count('data-role="leak"') == 1
    assert "Name three primes below ten." in html and "(record 99)" in html and "rouge_l 0.91" in html
    assert (
        "&lt;script&gt;window.__pwned=1&lt;/script&gt;Name three primes" in html
        and "<script>window" not in html
    )


def test_a_running_evaluations_page_follows_its_job_live_and_shows_the_results_when_it_ends(
    client: Any, db: Session, teacher: Any, browser_page: Any
):
    curator = make_user(db, "curator")
    project = make_project(db, (curator, "curator"))
    evaluation = _queued_evaluation(db, curator, project, TEACHERS)
    login(client, curator)
    serve_from(client, browser_page)
    page = browser_page
    page.goto(f"http://testserver/ui/evaluations/{evaluation.id}")
    assert page.locator('[data-role="no-results"]').count() == 1
    job = db.get(Job, evaluation.job_id)
    assert job is not None
    # What the worker writes as it goes (app/evaluation/jobs.py: Progress.report).
    job.status, job.progress_done, job.progress_total = "running", 3, 10
    job.counters = {"stage": "judging", "judged": 1}
    db.flush()
    page.locator('[data-role="count"]', has_text="3/10").wait_for()
    assert page.locator('[data-role="stage"]').inner_text() == "— judging"
    assert page.locator('[data-role="status"]').inner_text() == "running"
    evaluation.results = {
        "pairwise": {"win_rates": [_win_rate(None, 0.5)], "lengths": [], "confidence": 0.95}
    }
    job.status, job.progress_done = "succeeded", 10
    db.flush()
    page.locator('#evaluation[data-active="0"]').wait_for()  # reloaded: the server drew the results
    assert (
        page.locator('[data-role="overall-chart"] [data-role="rate-bar"]').get_attribute("data-rate")
        == "0.75"
    )


def _verdict(prompt_id: str, a: str, b: str, status: str, outcome: str | None) -> dict[str, Any]:
    order = {"swapped": False, "choice": None, "outcome": outcome, "rationale": "", "raw": "", "attempts": 1}
    return {
        "prompt_id": prompt_id,
        "system_a": a,
        "system_b": b,
        "ab": {**order, "status": "parsed", "key": None},
        "ba": {**order, "swapped": True, "status": "parsed", "key": None},
        "outcome": outcome,
        "status": status,
        "consistent": True,
    }


def test_the_prompt_by_prompt_view_shows_one_pair_of_three_systems_with_its_own_outcomes_and_pages():
    from app.ui.pages.evaluations import PAGE_SIZE, Filters, comparison_page

    rows = [
        {
            "prompt_id": str(i),
            "record_id": i,
            "text": f"prompt {i}",
            "category": "math" if i % 2 else "writing",
            "reference": None,
            "answers": {"x": f"x{i}", "y": f"y{i}", "z": f"z{i}"},
            # x beats y everywhere; y and z: y loses the odd prompts, the rest are not judged yet.
            "verdicts": [_verdict(str(i), "x", "y", "decided", "a")]
            + ([_verdict(str(i), "y", "z", "decided", "b")] if i % 2 else []),
        }
        for i in range(30)
    ]
    first = comparison_page(rows, ["x", "y", "z"], Filters())
    assert first.pairs == [("x", "y"), ("x", "z"), ("y", "z")]
    assert first.counts == {"win": 30} and first.total == 30 and len(first.rows) == PAGE_SIZE
    assert (first.rows[0].answer_a, first.rows[0].answer_b) == ("x0", "y0")
    second_page = comparison_page(rows, ["x", "y", "z"], Filters(offset=PAGE_SIZE))
    assert [r.prompt_id for r in second_page.rows] == [str(i) for i in range(PAGE_SIZE, 30)]
    y_vs_z = comparison_page(rows, ["x", "y", "z"], Filters(pair=2, outcome="loss"))
    assert y_vs_z.counts == {"loss": 15, "pending": 15}
    assert [r.prompt_id for r in y_vs_z.rows][:3] == ["1", "3", "5"] and y_vs_z.total == 15
    assert (y_vs_z.rows[0].answer_a, y_vs_z.rows[0].answer_b) == ("y1", "z1")
    writing = comparison_page(rows, ["x", "y", "z"], Filters(pair=2, category="writing"))
    assert writing.counts == {"pending": 15} and writing.categories == ["math", "writing"]
    out_of_range = comparison_page(rows, ["x", "y", "z"], Filters(pair=9, offset=-5))
    assert (out_of_range.pair, out_of_range.offset) == (0, 0)
