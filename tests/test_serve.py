"""The HTTP API over trained runs: generate (whole and streamed), score, activations, classify."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

from fastapi.testclient import TestClient  # noqa: E402

from rnnlab.api import LanguageModel, TextClassifier  # noqa: E402
from rnnlab.serve.app import create_app  # noqa: E402
from rnnlab.serve.limits import Limits  # noqa: E402
from rnnlab.serve.registry import Registry  # noqa: E402
from serve_runs import classifier_run, lm_run  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {"word": lm_run(root / "word"), "char": lm_run(root / "char", level="char"),
            "clf": classifier_run(root / "clf")}


@pytest.fixture(scope="module")
def client(runs: dict[str, Path]) -> TestClient:
    registry = Registry.load(list(runs.values()))
    with TestClient(create_app(registry)) as client:
        yield client


def events(text: str) -> list[dict]:
    return [json.loads(block.removeprefix("data: ")) for block in text.split("\n\n") if block]


def test_generate_returns_what_the_library_generates_with_the_same_seed(
        client: TestClient, runs: dict[str, Path]) -> None:
    options = dict(temperature=0.9, top_k=5, top_p=0.9, seed=3, num_samples=2)
    body = {"model": "word", "prompt": "the cat", "max_tokens": 12, **options}
    response = client.post("/v1/generate", json=body)
    assert response.status_code == 200, response.text
    expected = LanguageModel.load(runs["word"]).generate("the cat", 12, **options)
    assert response.json()["samples"] == expected


def test_streamed_pieces_join_into_the_library_stream(client: TestClient,
                                                      runs: dict[str, Path]) -> None:
    body = {"model": "char", "prompt": "ab", "max_tokens": 15, "seed": 5, "stream": True}
    response = client.post("/v1/generate", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    received = events(response.text)
    assert received[-1] == {"done": True, "tokens": 15}
    text = "".join(e["text"] for e in received[:-1])
    expected = "".join(LanguageModel.load(runs["char"]).stream("ab", 15, seed=5))
    assert text == expected


def test_score_gives_each_token_its_log_probability_and_alternatives(
        client: TestClient, runs: dict[str, Path]) -> None:
    response = client.post("/v1/score", json={"model": "word", "text": "the cat sees a dog",
                                              "top": 3})
    assert response.status_code == 200
    data = response.json()
    assert [t["token"] for t in data["tokens"]] == ["the", "cat", "sees", "a", "dog", "\n"]
    assert all(len(t["top"]) == 3 for t in data["tokens"])
    assert all(t["top"][0][1] >= t["logprob"] - 1e-6 for t in data["tokens"])
    expected = LanguageModel.load(runs["word"]).score(["the cat sees a dog"])[0]
    assert data["logprob"] == pytest.approx(expected["logprob"], abs=1e-4)
    assert data["ppl"] == pytest.approx(expected["ppl"], rel=1e-5)


def test_activations_follow_the_state_after_each_character(client: TestClient,
                                                           runs: dict[str, Path]) -> None:
    response = client.post("/v1/activations", json={"model": "char", "text": "abc",
                                                    "units": [0, 5], "layer": 0})
    assert response.status_code == 200
    data = response.json()
    assert data["tokens"] == ["a", "b", "c"]
    lm = LanguageModel.load(runs["char"])
    with torch.no_grad():
        _, state = lm.model(torch.tensor([[lm.vocab.id(c) for c in "abc"]]))
    assert data["units"]["5"][-1] == pytest.approx(float(state[0][0, 0, 5]), abs=1e-5)


def test_classify_returns_the_classifier_probabilities(client: TestClient,
                                                       runs: dict[str, Path]) -> None:
    texts = ["the cat runs home", "a small bird"]
    response = client.post("/v1/classify", json={"texts": texts})
    assert response.status_code == 200
    expected = TextClassifier.load(runs["clf"]).predict(texts)
    got = response.json()["results"]
    assert [r["label"] for r in got] == [r["label"] for r in expected]
    assert got[0]["probs"]["pos"] == pytest.approx(expected[0]["probs"]["pos"], abs=1e-6)


def test_models_health_page_and_openapi_docs_are_served(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "models": ["word", "char", "clf"]}
    models = client.get("/v1/models").json()["models"]
    assert [m["task"] for m in models] == ["lm", "lm", "classify"]
    page = client.get("/")
    assert page.status_code == 200 and "<title>rnnlab</title>" in page.text
    assert client.get("/page/app.js").status_code == 200
    assert client.get("/page/../app.py").status_code == 404
    assert "/v1/generate" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200


def test_with_several_language_models_a_request_must_name_one(client: TestClient) -> None:
    response = client.post("/v1/generate", json={"prompt": "the"})
    assert response.status_code == 422
    assert "word, char" in response.json()["error"]


def test_a_token_is_required_when_the_server_has_one(runs: dict[str, Path]) -> None:
    app = create_app(Registry.load([runs["clf"]]), Limits(), token="s3cret")
    with TestClient(app) as client:
        denied = client.post("/v1/classify", json={"texts": ["a cat"]})
        assert denied.status_code == 401 and "bearer" in denied.json()["error"].lower()
        wrong = client.post("/v1/classify", json={"texts": ["a cat"]},
                            headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        allowed = client.post("/v1/classify", json={"texts": ["a cat"]},
                              headers={"Authorization": "Bearer s3cret"})
        assert allowed.status_code == 200
        assert client.get("/healthz").status_code == 200
