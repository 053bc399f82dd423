"""Accuracy of a (quantized) model on an offline task, and agreement with full precision.

One task per kind of model, each measured on held-out data that calibration never sees:

* ``digits-cnn`` (:class:`DigitsTask`): accuracy on the held-out test split of
  scikit-learn's digits; agreement = share of test images whose predicted
  class equals the full-precision model's.
* text encoders such as ``minilm`` (:class:`TopicTask`): *which standard-library
  module does this sentence come from?* Each held-out docstring sentence
  (:func:`qviz.data.eval_data`'s split) is assigned to the module whose
  centroid embedding it is closest to (cosine), the centroids being the mean
  embeddings of a few labelled sentences per module drawn from the other
  split. It measures whether the embedding still separates topics (logging vs
  tarfile vs ssl ...), with the model under test embedding both the labelled
  set and the queries, as a deployed quantized encoder would. Agreement =
  share of queries given the same module as by full precision; also the mean
  cosine between the quantized and full-precision query embeddings.
* decoders (:class:`PerplexityTask`): perplexity on given text, the KL
  divergence of the quantized next-token distribution from the full-precision
  one and the share of tokens with the same top-1 prediction (the statistics
  llama.cpp's ``perplexity --kl-divergence`` reports); accuracy = next-token
  top-1 accuracy.

Examples
--------
>>> import qviz
>>> from qviz.evaluate import accuracy
>>> model = qviz.load("digits-cnn")                       # doctest: +SKIP
>>> accuracy.evaluate(model)["accuracy"]                  # doctest: +SKIP
0.97...
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn import functional as F

from qviz._errors import did_you_mean
from qviz.models import QvizModel, load

__all__ = [
    "TASKS",
    "DigitsTask",
    "PerplexityTask",
    "Task",
    "TopicTask",
    "decoder_metrics",
    "digits_accuracy",
    "evaluate",
    "get_task",
    "topic_accuracy",
]


# --------------------------------------------------------------------------- helpers


def _as_model(model: Any) -> QvizModel:
    if isinstance(model, QvizModel):
        return model
    if isinstance(model, str) or isinstance(model, torch.nn.Module):
        return load(model)
    raise TypeError(f"Expected a qviz model (qviz.load(...)) or a name; got {type(model).__name__}.")


def embed(model: QvizModel, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """Embeddings ``[n, dim]`` of ``texts``, batched by token length (less padding), in input order.

    Examples
    --------
    >>> import qviz
    >>> embed(qviz.load("minilm"), ["a", "b c"]).shape          # doctest: +SKIP
    torch.Size([2, 384])
    """
    texts = list(texts)
    if not texts:
        raise ValueError("embed() got no texts; pass at least one sentence.")
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[torch.Tensor] = [None] * len(texts)  # type: ignore[list-item]
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        y = model.run(model.prepare([texts[i] for i in idx])).float().cpu()  # [b, dim]
        for j, i in enumerate(idx):
            out[i] = y[j]
    return torch.stack(out)


# --------------------------------------------------------------------------- tasks


@dataclass
class Task:
    """A held-out evaluation: :meth:`reference` once on full precision, :meth:`score` per model.

    ``score`` returns a dict with at least ``accuracy`` and ``agreement``
    (fractions in [0, 1]) plus task-specific numbers; :attr:`metric_attrs`
    gives each key's ``long_name`` and ``units``.
    """

    name: str = "task"
    kinds: tuple[str, ...] = ()
    metric_attrs: dict[str, dict[str, str]] = field(default_factory=dict)

    def check(self, model: QvizModel) -> None:
        """Raise ``ValueError`` when the task cannot run on ``model``."""
        if self.kinds and model.kind not in self.kinds:
            raise ValueError(
                f"The {self.name!r} task needs a model of kind {' or '.join(self.kinds)}; "
                f"{model.name!r} is a {model.kind!r}. Pick a task for it (task=None chooses one)."
            )

    def reference(self, fp_model: QvizModel) -> Any:  # pragma: no cover - abstract
        """What :meth:`score` compares against, computed once on the full-precision model."""
        raise NotImplementedError

    def score(self, model: QvizModel, ref: Any) -> dict[str, float]:
        """The task's numbers for ``model``."""
        return self.score_full(model, ref)[0]

    def score_full(self, model: QvizModel, ref: Any) -> tuple[dict[str, float], dict[str, Any]]:  # pragma: no cover
        """``(numbers, state)``: the numbers and what later steps may reuse (e.g. a retrieval index)."""
        raise NotImplementedError


_ACC = {"long_name": "accuracy on held-out data", "units": "fraction"}
_AGREE = {"long_name": "top-1 agreement with full precision", "units": "fraction"}


@dataclass
class DigitsTask(Task):
    """Test-set accuracy of ``digits-cnn`` (scikit-learn digits, held-out 20%).

    Examples
    --------
    >>> DigitsTask().name
    'digits'
    """

    name: str = "digits"
    kinds: tuple[str, ...] = ("image-classifier",)
    n: int | None = None
    metric_attrs: dict[str, dict[str, str]] = field(
        default_factory=lambda: {
            "accuracy": {"long_name": "test-set accuracy (digits, held-out 20%)", "units": "fraction"},
            "agreement": _AGREE,
        }
    )

    def data(self, model: QvizModel) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images [n, 1, 8, 8], labels [n])`` of the test split."""
        from qviz.data import eval_data

        x, y = eval_data(model, n=self.n)
        return x, y

    @torch.no_grad()
    def predict(self, model: QvizModel, x: torch.Tensor) -> torch.Tensor:
        """Predicted classes ``[n]``."""
        return torch.cat([model.run(model.prepare(x[i : i + 512])).argmax(-1).cpu() for i in range(0, len(x), 512)])

    def reference(self, fp_model: QvizModel) -> dict[str, torch.Tensor]:
        self.check(fp_model)
        x, y = self.data(fp_model)
        return {"x": x, "y": y, "pred": self.predict(fp_model, x)}

    def score_full(self, model: QvizModel, ref: dict[str, torch.Tensor]) -> tuple[dict[str, float], dict[str, Any]]:
        self.check(model)
        pred = self.predict(model, ref["x"])
        return {
            "accuracy": float((pred == ref["y"]).double().mean()),
            "agreement": float((pred == ref["pred"]).double().mean()),
        }, {"pred": pred}


@dataclass
class TopicTask(Task):
    """Nearest-centroid topic classification of held-out docstring sentences by source module.

    Parameters
    ----------
    n_eval : int
        Held-out query sentences (in the corpus's stable order).
    support_per_class : int
        Labelled sentences per module whose mean embedding is the module's centroid.
    min_per_class : int
        Modules with fewer sentences than this are left out (too few to label).
    skip_calib : int
        The first ``skip_calib`` sentences of the calibration split (those
        :func:`qviz.calibration_data` hands out) are never used as labelled
        sentences, so the task never scores on what a method calibrated on.

    Examples
    --------
    >>> t = TopicTask(n_eval=64)
    >>> t.name, t.kinds
    ('topic', ('text-encoder',))
    """

    name: str = "topic"
    kinds: tuple[str, ...] = ("text-encoder",)
    n_eval: int = 192
    support_per_class: int = 6
    min_per_class: int = 30
    skip_calib: int = 256
    metric_attrs: dict[str, dict[str, str]] = field(
        default_factory=lambda: {
            "accuracy": {
                "long_name": "topic accuracy (source module of held-out sentences, nearest centroid)",
                "units": "fraction",
            },
            "agreement": {"long_name": "top-1 agreement with full precision (same module)", "units": "fraction"},
            "embedding_cosine": {"long_name": "mean cosine to the full-precision embedding", "units": "1"},
        }
    )

    def __post_init__(self) -> None:
        for name in ("n_eval", "support_per_class", "min_per_class"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"TopicTask {name} must be a positive int; got {v!r}.")

    def data(self) -> dict[str, Any]:
        """Queries, their labels, the labelled support sentences and the class names."""
        from qviz import _corpus

        labelled = _corpus.labelled_sentences()
        source = dict(labelled)
        counts: dict[str, int] = {}
        for _, mod in labelled:
            counts[mod] = counts.get(mod, 0) + 1
        calib = _corpus.split("calib")[self.skip_calib :]
        support: dict[str, list[str]] = {}
        for s in calib:
            mod = source.get(s)
            if mod is not None and counts[mod] >= self.min_per_class and len(support.setdefault(mod, [])) < self.support_per_class:
                support[mod].append(s)
        classes = sorted(m for m, v in support.items() if v)
        label = {m: i for i, m in enumerate(classes)}
        queries = [s for s in _corpus.split("eval") if source.get(s) in label][: self.n_eval]
        if not queries:
            raise ValueError("No held-out sentence belongs to a module with enough sentences; lower min_per_class.")
        return {
            "queries": queries,
            "labels": torch.tensor([label[source[s]] for s in queries]),
            "support": [s for m in classes for s in support[m]],
            "support_labels": torch.tensor([label[m] for m in classes for _ in support[m]]),
            "classes": classes,
        }

    def centroids(self, model: QvizModel, data: dict[str, Any]) -> torch.Tensor:
        """Unit-norm class centroids ``[n_classes, dim]`` embedded by ``model``."""
        e = embed(model, data["support"])  # [n_support, dim]
        lab = data["support_labels"]
        c = torch.stack([e[lab == k].mean(0) for k in range(len(data["classes"]))])
        return F.normalize(c, dim=-1)

    def reference(self, fp_model: QvizModel) -> dict[str, Any]:
        self.check(fp_model)
        data = self.data()
        q = embed(fp_model, data["queries"])  # [n, dim]
        c = self.centroids(fp_model, data)
        return {**data, "q": q, "index": c, "pred": (q @ c.t()).argmax(-1)}

    def score_full(self, model: QvizModel, ref: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
        self.check(model)
        q = embed(model, ref["queries"])
        c = self.centroids(model, ref)  # the model's own index, reused by the attacks
        pred = (q @ c.t()).argmax(-1)
        return {
            "accuracy": float((pred == ref["labels"]).double().mean()),
            "agreement": float((pred == ref["pred"]).double().mean()),
            "embedding_cosine": float(F.cosine_similarity(q, ref["q"], dim=-1).mean()),
        }, {"index": c, "pred": pred}


@dataclass
class PerplexityTask(Task):
    """llama.cpp-style perplexity, KL divergence, Δp and same-top-1 against full precision, for decoders.

    The text is cut into token chunks (:func:`qviz.data.token_batches`); the
    second half of each chunk is scored (:mod:`qviz.evaluate.decoder`). The
    reference's log-probabilities are computed once (:meth:`reference`) and
    reused for every config.

    Parameters
    ----------
    texts : list of str or None
        Your own held-out text; default: the model's held-out text
        (:func:`qviz.eval_data`: token batches for pretrained decoders, sentences
        for the random-weight ones).
    n : int
        How many chunks (pretrained decoders, default text) or sentences
        (random-weight decoders) to read.
    seq_len : int
        Tokens per chunk.
    batch_size : int
        Chunks per forward pass.
    spill_to
        Where the reference's log-probabilities live (see
        :func:`~qviz.evaluate.decoder.reference_log_probs`).

    Examples
    --------
    >>> PerplexityTask(texts=["Hello there."]).name
    'perplexity'
    """

    name: str = "perplexity"
    kinds: tuple[str, ...] = ("decoder",)
    texts: Sequence[str] | None = None
    n: int = 8
    seq_len: int = 256
    batch_size: int = 4
    spill_to: Any = None
    metric_attrs: dict[str, dict[str, str]] = field(default_factory=lambda: _decoder_attrs())

    def __post_init__(self) -> None:
        if self.texts is not None:
            if isinstance(self.texts, str) or not all(isinstance(t, str) for t in self.texts) or not self.texts:
                raise TypeError("PerplexityTask texts must be a non-empty list of strings.")
        for name in ("n", "seq_len", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"PerplexityTask {name} must be a positive int; got {v!r}.")

    def data(self, model: QvizModel) -> dict[str, torch.Tensor]:
        """The token batches scored."""
        from qviz.data import _token_decoder, eval_data, token_batches

        if self.texts is not None:
            return token_batches(model, list(self.texts), self.seq_len)
        if _token_decoder(model):
            return eval_data(model, n=self.n, seq_len=self.seq_len)[0]
        return token_batches(model, eval_data(model, n=self.n)[0], self.seq_len)

    def reference(self, fp_model: QvizModel) -> dict[str, Any]:
        from qviz.evaluate.decoder import reference_log_probs

        self.check(fp_model)
        data = self.data(fp_model)
        ref = reference_log_probs(fp_model, data, batch_size=self.batch_size, spill_to=self.spill_to)
        return {"log_probs": ref, "data": data}

    def score_full(self, model: QvizModel, ref: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
        from qviz.evaluate.decoder import decoder_quality

        self.check(model)
        return decoder_quality(model, ref["log_probs"], batch_size=self.batch_size), {}


def _decoder_attrs() -> dict[str, dict[str, str]]:
    from qviz.evaluate.decoder import METRIC_ATTRS

    return {k: dict(v) for k, v in METRIC_ATTRS.items()}


@torch.no_grad()
def decoder_metrics(model: QvizModel, reference: QvizModel, texts: Sequence[str], batch_size: int = 8) -> dict[str, float]:
    """Perplexity of ``model`` on ``texts``, KL to ``reference``, same-top-1 share and top-1 accuracy.

    Every real (non-padding) token after the first is predicted from the ones
    before it. ``kl_divergence`` is the mean over those tokens of
    ``Σ_v p_ref(v) (log p_ref(v) - log p(v))``; ``agreement`` the share whose
    argmax equals the reference's; ``accuracy`` the share whose argmax is the
    actual next token; ``perplexity`` ``exp`` of the mean negative log-likelihood.

    Examples
    --------
    >>> import qviz
    >>> m = qviz.load("tiny-gpt2")
    >>> r = decoder_metrics(m, m, ["Hello world, hello."])
    >>> r["kl_divergence"] == 0.0, r["agreement"]
    (True, 1.0)
    """
    model, reference = _as_model(model), _as_model(reference)
    for m in (model, reference):
        if m.kind != "decoder":
            raise ValueError(f"decoder_metrics needs decoders; {m.name!r} is a {m.kind!r}.")
    texts = list(texts)
    if not texts:
        raise ValueError("decoder_metrics got no texts; pass at least one string.")
    nll = kl = same = right = 0.0
    count = 0
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        inputs = model.prepare(chunk)
        ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
        logp = F.log_softmax(model.run(inputs).float(), -1)[:, :-1]  # [b, t-1, vocab]
        logp_ref = F.log_softmax(reference.run(reference.prepare(chunk)).float(), -1)[:, :-1]
        target = ids[:, 1:]  # [b, t-1]
        keep = mask[:, 1:] & mask[:, :-1]  # predicted token and its context are real
        lp, lr, tg = logp[keep], logp_ref[keep], target[keep]  # [n, vocab], [n, vocab], [n]
        nll += float(-lp.gather(1, tg[:, None]).sum())
        kl += float((lr.exp() * (lr - lp)).sum())
        top = lp.argmax(-1)
        same += float((top == lr.argmax(-1)).sum())
        right += float((top == tg).sum())
        count += int(keep.sum())
    if count == 0:
        raise ValueError("The texts have no token to predict (each needs at least two tokens).")
    return {
        "accuracy": right / count,
        "agreement": same / count,
        "perplexity": math.exp(nll / count),
        "kl_divergence": max(kl / count, 0.0),
    }


TASKS: dict[str, type[Task]] = {"digits": DigitsTask, "topic": TopicTask, "perplexity": PerplexityTask}


def default_task(model: QvizModel) -> Task:
    """The task :func:`qviz.compare` uses for a model when none is given."""
    if model.kind == "image-classifier" and model.name == "digits-cnn":
        return DigitsTask()
    if model.kind == "text-encoder":
        return TopicTask()
    if model.kind == "decoder":
        return PerplexityTask()
    raise ValueError(
        f"qviz has no default evaluation task for {model.name!r} (kind {model.kind!r}). Pass task= a "
        f"qviz.evaluate.accuracy.Task (e.g. DigitsTask, TopicTask, PerplexityTask) or one of {sorted(TASKS)}."
    )


def get_task(task: Task | str | None, model: QvizModel) -> Task:
    """Normalise ``task`` (None, a name in :data:`TASKS`, or a :class:`Task`) and check it fits ``model``.

    Examples
    --------
    >>> import qviz
    >>> get_task("perplexity", qviz.load("tiny-llama")).name
    'perplexity'
    >>> get_task("perplexty", qviz.load("tiny-llama"))
    Traceback (most recent call last):
    ...
    ValueError: Unknown task 'perplexty'. Did you mean 'perplexity'? Known tasks: digits, perplexity, topic.
    """
    if task is None:
        t = default_task(model)
    elif isinstance(task, str):
        if task not in TASKS:
            raise ValueError(f"Unknown task {task!r}.{did_you_mean(task, TASKS)} Known tasks: {', '.join(sorted(TASKS))}.")
        t = TASKS[task]()
    elif isinstance(task, Task):
        t = task
    else:
        raise TypeError(f"task must be None, a task name ({', '.join(sorted(TASKS))}) or a Task; got {type(task).__name__}.")
    t.check(model)
    return t


def evaluate(model: Any, task: Task | str | None = None, reference: Any = None) -> dict[str, float]:
    """Score ``model`` on ``task`` against the full-precision ``reference`` (default: ``model`` itself).

    Returns a dict with ``accuracy`` and ``agreement`` (fractions) and the
    task's other numbers.

    Examples
    --------
    >>> import qviz
    >>> m = qviz.load("tiny-llama")
    >>> sorted(evaluate(m, PerplexityTask(texts=["Some text to read."])))
    ['accuracy', 'agreement', 'kl_divergence', 'perplexity']
    """
    model = _as_model(model)
    ref_model = model if reference is None else _as_model(reference)
    t = get_task(task, ref_model)
    return t.score(model, t.reference(ref_model))


def digits_accuracy(model: Any, n: int | None = None) -> float:
    """Test-set accuracy of a digits classifier (``digits-cnn`` or a quantized copy).

    Examples
    --------
    >>> import qviz
    >>> digits_accuracy(qviz.load("digits-cnn")) > 0.9      # doctest: +SKIP
    True
    """
    model = _as_model(model)
    t = DigitsTask(n=n)
    t.check(model)
    x, y = t.data(model)
    return float((t.predict(model, x) == y).double().mean())


def topic_accuracy(model: Any, n_eval: int = 192) -> float:
    """Topic accuracy of a text encoder (see :class:`TopicTask`).

    Examples
    --------
    >>> import qviz
    >>> topic_accuracy(qviz.load("minilm"), n_eval=128)     # doctest: +SKIP
    0.6...
    """
    model = _as_model(model)
    t = TopicTask(n_eval=n_eval)
    t.check(model)
    data = t.data()
    q, c = embed(model, data["queries"]), t.centroids(model, data)
    return float(((q @ c.t()).argmax(-1) == data["labels"]).double().mean())
