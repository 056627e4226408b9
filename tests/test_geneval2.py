"""GenEval 2's Soft-TIFA (reward_models/geneval2.py, the geneval2 prompt set and suite) against facebookresearch/GenEval2
@ a6e82d2 (evaluation.py, soft_tifa_analysis.py): the per-question formula on crafted logits, the aggregation on crafted
scores, bad data lines, a tiny random Qwen3-VL loaded through the reward against a hand-built forward, and the served
backend against a local chat-completions server."""

import importlib.util
import json
import math

import numpy as np
import pytest
import torch
from test_reward_judges import SERVED_MODEL, FakeChatServer, _decode_data_url

from flowopd.benchmarks import prompt_sets as PS
from flowopd.benchmarks.suites import get_suite, soft_tifa_metrics
from flowopd.errors import FlowOPDError, InputError
from flowopd.reward_models import get_reward_class, load_reward
from flowopd.reward_models.geneval2 import (
    GenEval2SoftTIFA,
    answer_spellings,
    check_geneval2_record,
    first_token_ids,
    geometric_mean,
    served_first_token,
    soft_tifa_question_score,
)

SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
# whole tokens of the test vocabulary; " Three" is left out on purpose, so it encodes as [" ", "Three"]
WORDS = ["Yes", "yes", " yes", " Yes", "one", "One", " one", " One", "three", "Three", " three", "How", " many", " cats", "?"]
TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
URL_ENV = "FLOWOPD_GENEVAL2_SOFT_TIFA_URL"


def qwen_style_tokenizer():
    """A byte-level BPE with Qwen2's pre-tokenizer (transformers' ``Qwen2Tokenizer``) over the bytes and :data:`WORDS`."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer

    vocab = {c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}
    merges: list[tuple[str, str]] = []
    for word in WORDS:  # merge the word's current pieces, as BPE splits it with the merges so far, until it is one token
        while len(pieces := _bpe(list(word.replace(" ", "Ġ")), merges)) > 1:
            merges.append((pieces[0], pieces[1]))
            vocab[pieces[0] + pieces[1]] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges)
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIALS})
    return tokenizer


def _bpe(pieces: list[str], merges: list[tuple[str, str]]) -> list[str]:
    """BPE: merge the adjacent pair of lowest rank until no pair is a merge."""
    rank = {pair: r for r, pair in enumerate(merges)}
    while True:
        pairs = [(rank[p], i) for i, p in enumerate(zip(pieces, pieces[1:])) if p in rank]
        if not pairs:
            return pieces
        _, i = min(pairs)
        pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]


# ----------------------------------------------------------------------------- the formula


def test_the_spellings_are_upstreams():
    assert answer_spellings("Is the cat red?", "Yes") == ("Yes", "yes", " yes", " Yes")
    assert answer_spellings("How many cats are in the image?", "three") == ("three", "Three", " three", " Three", "3", " 3")
    assert answer_spellings("How many dogs are there?", "ten")[-2:] == ("10", " 10")


def test_a_question_scores_the_probabilities_at_its_spellings_first_tokens_by_hand():
    tok = qwen_style_tokenizer()
    ids = tok.convert_tokens_to_ids
    assert all(len(tok.encode(w)) == 1 for w in WORDS)
    assert tok.convert_ids_to_tokens(tok.encode(" 3")) == ["Ġ", "3"]  # Qwen's rule: the space before a digit is its own token
    assert tok.convert_ids_to_tokens(tok.encode(" Three")) == ["Ġ", "Three"]
    logits = torch.zeros(len(tok))
    crafted = {"Yes": 2.0, "Ġyes": 1.0, "yes": -1.0, "ĠYes": 0.5, "three": 1.5, "Three": 0.25, "Ġthree": 0.75, "3": 3.0, "Ġ": 1.25}
    for token, value in crafted.items():
        logits[ids(token)] = value
    p = logits.float().softmax(-1)
    z = (len(tok) - len(crafted)) + sum(math.exp(v) for v in crafted.values())
    yes = soft_tifa_question_score(p, first_token_ids(tok, answer_spellings("Is the cat red?", "Yes")))
    assert yes == pytest.approx((math.exp(2.0) + math.exp(-1.0) + math.exp(1.0) + math.exp(0.5)) / z, rel=1e-6)
    # three, Three, " three", " Three" -> [" ", "Three"], 3, " 3" -> [" ", "3"]: P(" ") is added twice (one term per spelling)
    count = soft_tifa_question_score(p, first_token_ids(tok, answer_spellings("How many cats are in the image?", "three")))
    by_hand = math.exp(1.5) + math.exp(0.25) + math.exp(0.75) + math.exp(1.25) + math.exp(3.0) + math.exp(1.25)
    assert count == pytest.approx(by_hand / z, rel=1e-6)


def test_the_served_first_token_of_a_spelling_follows_qwens_pre_tokenizer():
    tok = qwen_style_tokenizer()
    for spelling in ("Yes", " yes", "three", " three", "3", " 3", "10", " 10"):
        first = tok.convert_ids_to_tokens(first_token_ids(tok, [spelling]))[0].replace("Ġ", " ")
        assert served_first_token(spelling) == first, spelling


def test_the_geometric_mean_is_scipys_gmean_and_any_zero_gives_zero():
    from scipy.stats import gmean

    values = [0.91, 0.2, 0.55, 0.999, 0.03]
    assert geometric_mean(values) == pytest.approx(float(gmean(values)), rel=1e-12)
    assert geometric_mean([0.5, 0.0, 0.9]) == 0.0 and geometric_mean([0.25, 1.0]) == pytest.approx(0.5)


# ----------------------------------------------------------------------------- aggregation


def _record(scores, skills, atoms, failed=False):
    meta = {"atom_count": atoms, "skills": skills, "vqa_list": [[f"q{i}", "Yes"] for i in range(len(skills))]}
    score = (
        {"raw": None, "failed": True, "details": {"error": "x"}}
        if failed
        else {"raw": sum(scores) / len(scores), "details": {"question_scores": scores}}
    )
    return {"prompt": "p", "metadata": meta, "scores": {"geneval2_soft_tifa": score}}


def test_am_gm_per_skill_and_per_atom_count_by_hand():
    records = [
        _record([0.5, 1.0, 0.25], ["count", "object", "attribute"], 3),  # AM 0.58333, GM 0.125^(1/3) = 0.5
        _record([0.8, 0.2], ["object", "count"], 3),  # AM 0.5, GM 0.4
        _record([0.9, 0.0, 1.0], ["object", "position", "verb"], 4),  # AM 0.63333, GM 0
        _record([1.0], ["object"], 4, failed=True),  # left out
    ]
    m = soft_tifa_metrics(records, "geneval2_soft_tifa")
    assert m["soft_tifa_am"]["mean"] == pytest.approx(100 * (7 / 12 + 0.5 + 1.9 / 3) / 3) and m["soft_tifa_am"]["n"] == 3
    assert m["soft_tifa_gm"]["mean"] == pytest.approx(100 * (0.5 + 0.4 + 0.0) / 3)
    assert m["skill/object"]["mean"] == pytest.approx(100 * (1.0 + 0.8 + 0.9) / 3) and m["skill/object"]["n"] == 3  # pooled
    assert m["skill/count"]["mean"] == pytest.approx(35.0) and m["skill/count"]["n"] == 2
    assert (m["skill/attribute"]["mean"], m["skill/position"]["mean"], m["skill/verb"]["mean"]) == pytest.approx((25.0, 0.0, 100.0))
    assert m["atoms/3"]["mean"] == pytest.approx(45.0) and m["atoms/3"]["n"] == 2
    assert m["atoms/4"]["mean"] == 0.0 and m["atoms/4"]["n"] == 1
    lo, hi = m["soft_tifa_gm"]["ci95"]
    assert 0.0 <= lo < m["soft_tifa_gm"]["mean"] < hi <= 100.0
    assert soft_tifa_metrics(records[3:], "geneval2_soft_tifa") == {}


def test_the_suite(shared_data, monkeypatch):
    monkeypatch.setenv("FLOWOPD_DATA_DIR", str(shared_data))
    monkeypatch.delenv("FLOWOPD_PROMPTS_GENEVAL2", raising=False)
    suite = get_suite("geneval2")
    assert suite.images_per_prompt == 1 and suite.rewards == ("geneval2_soft_tifa",) and suite.group_key == "atom_count"
    items = suite.items(limit=2, seed=0)
    assert len(items) == 16 and sorted({m["atom_count"] for _, _, m in items}) == list(range(3, 11))


# ----------------------------------------------------------------------------- bad data


def _lines(tmp_path, *lines):
    path = tmp_path / "geneval2_data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = json.dumps({"prompt": "two cats", "atom_count": 3, "vqa_list": [["How many cats are in the image?", "two"]], "skills": ["count"]})


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        (json.dumps({"prompt": "a cat", "atom_count": 3, "skills": ["object"]}), r'no "vqa_list"'),
        (
            json.dumps({"prompt": "a cat", "vqa_list": [["Is there a cat?", "Yes"]], "skills": ["object", "count"]}),
            r"1 questions but there are 2 skills",
        ),
        ('{"prompt": "a cat", "vqa_list": [', r"not valid JSON"),
        (json.dumps({"prompt": "a cat", "vqa_list": [["How many cats?", "2"]], "skills": ["count"]}), r"must be one of one, two"),
    ],
)
def test_a_bad_line_is_named_with_its_file_and_line(tmp_path, monkeypatch, bad, says):
    path = _lines(tmp_path, GOOD, bad)
    monkeypatch.setenv("FLOWOPD_PROMPTS_GENEVAL2", str(path))
    with pytest.raises(InputError, match=rf"{path}:2: .*{says}") as err:
        PS.resolve("geneval2")
    assert "\n" not in str(err.value)


def test_a_plain_prompt_file_with_questions_is_checked_too(tmp_path):
    path = _lines(tmp_path, json.dumps({"prompt": "a cat", "vqa_list": [["Is there a cat?", "No"]], "skills": ["object"]}))
    with pytest.raises(InputError, match=rf"{path}:1: .*must be 'Yes'"):
        PS.resolve(str(path))


# ----------------------------------------------------------------------------- in process: a tiny Qwen3-VL


def _tiny_qwen3_vl(folder):
    """Tokenizer, image processor, chat template and a random Qwen3-VL, each saved as the hub checkpoint keeps them."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = qwen_style_tokenizer()
    tokenizer.save_pretrained(str(folder))
    images = Qwen2VLImageProcessorPil(
        patch_size=16, temporal_patch_size=2, merge_size=2, size={"shortest_edge": 1024, "longest_edge": 16384}
    )
    images.save_pretrained(str(folder))
    (folder / "chat_template.jinja").write_text(TEMPLATE)
    ids = dict(zip(SPECIALS, tokenizer.convert_tokens_to_ids(SPECIALS)))
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], "mrope_interleaved": True},
    )
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=48,
        num_heads=2,
        out_hidden_size=32,
        num_position_embeddings=16,
        deepstack_visual_indexes=[0],
    )
    config = Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(config)
    with torch.no_grad():  # the default init (std 0.02) makes the next token nearly uniform; spread it
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory):
    return _tiny_qwen3_vl(tmp_path_factory.mktemp("qwen3-vl") / "qwen3-vl-8b-instruct")


@pytest.fixture()
def processor_without_torchvision(monkeypatch):
    """transformers builds Qwen3VLProcessor only with its video processor, which imports torchvision; where torchvision is
    missing (here) ``AutoProcessor.from_pretrained`` gives the same Qwen3VLProcessor class from the folder's tokenizer,
    image processor and chat template, with no video processor (images only need none)."""
    if importlib.util.find_spec("torchvision") is not None:
        return
    import transformers
    from transformers.processing_utils import ProcessorMixin

    def from_pretrained(path, **kwargs):
        from pathlib import Path

        with monkeypatch.context() as m:  # the constructor checks every part's class, the missing video processor too
            m.setattr(ProcessorMixin, "check_argument_for_proper_class", lambda self, name, arg: None)
            return transformers.Qwen3VLProcessor(
                image_processor=transformers.AutoImageProcessor.from_pretrained(path),
                tokenizer=transformers.AutoTokenizer.from_pretrained(path),
                video_processor=None,
                chat_template=(Path(path) / "chat_template.jinja").read_text(),
            )

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", from_pretrained)


def _hand_soft_tifa(folder, image: np.ndarray, question: str, spellings: list[str]) -> float:
    """One question alone: the chat-template text written out, image pads by hand, one forward, softmax, the first tokens."""
    from PIL import Image
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen3VLForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = Qwen3VLForConditionalGeneration.from_pretrained(str(folder)).eval()
    pixels = AutoImageProcessor.from_pretrained(str(folder))(images=[Image.fromarray(image)], return_tensors="pt")
    pads = int(pixels["image_grid_thw"].prod()) // 4  # merge_size 2 x 2 patches per image token
    text = f"<|im_start|>user\n<|vision_start|>{'<|image_pad|>' * pads}<|vision_end|>{question} Answer in one word.<|im_end|>\n<|im_start|>assistant\n"
    input_ids = tok(text, return_tensors="pt")["input_ids"]
    mm = (input_ids == tok.convert_tokens_to_ids("<|image_pad|>")).long()
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), mm_token_type_ids=mm, **pixels).logits[0, -1]
    p = logits.float().softmax(-1)
    return sum(float(p[tok.encode(s)[0]]) for s in spellings)


QUESTIONS = [
    {
        "vqa_list": [["How many cats are in the image?", "three"], ["Are there any cats in the image?", "Yes"]],
        "skills": ["count", "object"],
    },
    {
        "vqa_list": [
            ["Is the cat red?", "Yes"],
            ["How many dogs are in the image?", "one"],
            ["Is the cat big?", "Yes"],
            ["Any dogs?", "Yes"],
        ],
        "skills": ["attribute", "count", "attribute", "object"],
    },
]


def test_the_local_backend_matches_a_hand_built_forward(qwen_folder, processor_without_torchvision):
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 96, 3), dtype=np.uint8)
    reward = load_reward("geneval2_soft_tifa", backend="local", weights={"qwen3-vl-8b-instruct": qwen_folder}, questions_per_forward=2)
    assert reward.identity() == "local:float32"
    reward._ensure_loaded()
    rows, forward = [], reward._model.forward
    reward._model.forward = lambda **batch: rows.append(len(batch["input_ids"])) or forward(**batch)
    scores = reward.score(images, ["three cats", "a red cat and a dog"], QUESTIONS)
    assert sorted(rows) == [1, 1, 1, 1, 2]  # "Is the cat red?" and "Is the cat big?": equal lengths, one forward, unpadded
    for image, meta, raw, details in zip(images, QUESTIONS, scores.raw.tolist(), scores.details):
        hand = [_hand_soft_tifa(qwen_folder, image, q, list(answer_spellings(q, a))) for q, a in meta["vqa_list"]]
        assert details["question_scores"] == pytest.approx(hand, rel=1e-4, abs=1e-7)
        assert raw == pytest.approx(sum(hand) / len(hand), rel=1e-4) and details["gm"] == pytest.approx(geometric_mean(hand), rel=1e-4)
        assert details["backend"] == "local" and 0 < raw < 1


def test_metadata_without_questions_is_refused(qwen_folder, processor_without_torchvision):
    reward = load_reward("geneval2_soft_tifa", backend="local", weights={"qwen3-vl-8b-instruct": qwen_folder})
    image = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    assert not reward.applies_to("a cat", {"tag": "single_object"}) and reward.applies_to("a cat", QUESTIONS[0])
    with pytest.raises(ValueError, match=r"geneval2_soft_tifa: image 0: no \"vqa_list\""):
        reward.score(image, ["a cat"], [{"skills": []}])


def test_a_record_that_is_not_a_dict_is_refused_in_one_line():
    for record in (None, ["a cat"], "a cat"):
        with pytest.raises(ValueError, match=r"^the record is \w+, not a dict; "):
            check_geneval2_record(record)


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed here")
def test_without_torchvision_the_local_backend_says_what_to_install(qwen_folder, monkeypatch):
    monkeypatch.delenv(URL_ENV, raising=False)
    reward = load_reward("geneval2_soft_tifa", weights={"qwen3-vl-8b-instruct": qwen_folder})
    with pytest.raises(FlowOPDError, match=r"needs torchvision.*pip install torchvision.*FLOWOPD_GENEVAL2_SOFT_TIFA_URL"):
        reward.score(np.zeros((1, 32, 32, 3), dtype=np.uint8), ["three cats"], QUESTIONS[:1])
    monkeypatch.setenv("FLOWOPD_WEIGHTS_QWEN3_VL_8B_INSTRUCT", str(qwen_folder))
    ok, reason = GenEval2SoftTIFA.weights_status()
    assert not ok and "torchvision" in reason and URL_ENV in reason


def test_status_names_both_ways_and_the_backend_follows_the_url(tmp_path, monkeypatch):
    assert get_reward_class("geneval2_soft_tifa") is GenEval2SoftTIFA
    monkeypatch.delenv(URL_ENV, raising=False)
    monkeypatch.setenv("FLOWOPD_WEIGHTS_QWEN3_VL_8B_INSTRUCT", str(tmp_path / "none"))
    ok, reason = GenEval2SoftTIFA.weights_status()
    assert not ok and "flowopd weights download geneval2_soft_tifa" in reason and URL_ENV in reason and "\n" not in reason
    assert GenEval2SoftTIFA().backend == "local"
    monkeypatch.setenv(URL_ENV, "http://127.0.0.1:1/v1")
    assert GenEval2SoftTIFA.weights_status() == (True, None) and GenEval2SoftTIFA().backend == "served"


# ----------------------------------------------------------------------------- served


@pytest.fixture
def server(monkeypatch):
    for key in ("URL", "MODEL", "API_KEY"):
        monkeypatch.delenv(f"FLOWOPD_GENEVAL2_SOFT_TIFA_{key}", raising=False)
    fake = FakeChatServer()
    fake.thread.start()
    yield fake
    fake.httpd.shutdown()
    fake.httpd.server_close()


def _served(server, **kw):
    return GenEval2SoftTIFA(base_url=server.url, timeout=0.5, max_retries=0, backoff=0.01, concurrency=4, **kw)


def test_the_served_backend_sums_the_returned_first_tokens_by_hand(server):
    server.script("c1", ("logprobs", [(" ", -1.2), ("3", -0.5), ("Three", -2.0), ("two", -1.0), ("Yes", -3.0)]))
    server.script("y1", ("logprobs", [("Yes", -0.3), ("No", -1.6), (" yes", -2.5)]))
    server.script("y2", ("status", 422, "unprocessable image"))
    meta = [
        {
            "vqa_list": [["How many cats are in the image? case:c1", "three"], ["Is the cat red? case:y1", "Yes"]],
            "skills": ["count", "attribute"],
        },
        {"vqa_list": [["Is the dog red? case:y2", "Yes"]], "skills": ["attribute"]},
    ]
    arr = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    reward = _served(server)
    assert reward.backend == "served" and reward.identity() == f"served:{SERVED_MODEL}"
    scores = reward.score(arr, ["three red cats", "a red dog"], meta)
    count = math.exp(-2.0) + math.exp(-0.5) + math.exp(-1.2)  # Three, 3 and " " (the first token of " 3")
    yes = math.exp(-0.3) + math.exp(-2.5)
    d = scores.details[0]
    assert d["question_scores"] == pytest.approx([count, yes], rel=1e-9) and d["absent_first_tokens"] == [3, 2]
    assert scores.raw[0].item() == pytest.approx((count + yes) / 2, rel=1e-6) and d["gm"] == pytest.approx(math.sqrt(count * yes))
    assert scores.failed.tolist() == [False, True] and "question 1" in scores.details[1]["error"]  # NaN, never 0
    (payload,) = server.payloads("c1")
    assert (payload["max_tokens"], payload["temperature"], payload["logprobs"], payload["top_logprobs"]) == (1, 0, True, 20)
    (message,) = payload["messages"]  # one user turn, no system message
    image_part, text_part = message["content"]
    assert text_part["text"] == "How many cats are in the image? case:c1 Answer in one word."
    np.testing.assert_array_equal(_decode_data_url(image_part["image_url"]["url"]), arr[0])


def test_a_reply_without_logprobs_is_refused_with_the_server_setting(server):
    server.script("n1", ("reply", "Yes"))
    meta = [{"vqa_list": [["Is the cat red? case:n1", "Yes"]], "skills": ["attribute"]}]
    with pytest.raises(FlowOPDError, match=r"answered without logprobs.*--max-logprobs 20") as err:
        _served(server, model="qwen3-vl").score(np.zeros((1, 8, 8, 3), dtype=np.uint8), ["a red cat"], meta)
    assert "\n" not in str(err.value)


def test_the_suite_end_to_end_through_the_runner_with_the_served_reward(server, shared_data, tmp_path, monkeypatch):
    """``flowopd eval --suite geneval2 --limit 1`` (a mini model's images, one prompt per atom count) scored by the served
    reward: the summary's metrics equal GenEval 2's formulas applied by hand to the scripted logprobs."""
    from flowopd.benchmarks.runner import EvalConfig, run_eval

    monkeypatch.setenv("FLOWOPD_DATA_DIR", str(shared_data))
    monkeypatch.setenv("FLOWOPD_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("FLOWOPD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(URL_ENV, server.url)
    server.script("", ("logprobs", [("Yes", -0.1), ("one", -1.0), ("1", -1.5), (" ", -2.0), ("No", -2.5)]))  # every question
    summary = run_eval(EvalConfig(suites=["geneval2"], model="mini-base", limit=1), tmp_path / "out")
    prompts = PS.resolve("geneval2")
    firsts = {k: next(p for p in prompts if p.metadata["atom_count"] == k) for k in range(3, 11)}  # --limit 1 per atom count
    value = {"Yes": math.exp(-0.1), "one": math.exp(-1.0) + math.exp(-1.5) + math.exp(-2.0)}  # one, 1 and " " of " 1"
    per_prompt = {k: [value.get(a, math.exp(-2.0)) for _, a in p.metadata["vqa_list"]] for k, p in firsts.items()}  # two..: " "
    m = summary["metrics"]
    am = [sum(s) / len(s) for s in per_prompt.values()]
    assert m["geneval2/soft_tifa_am"]["mean"] == pytest.approx(100 * sum(am) / 8, rel=1e-6) and m["geneval2/soft_tifa_am"]["n"] == 8
    gm = {k: math.prod(s) ** (1 / len(s)) for k, s in per_prompt.items()}
    assert m["geneval2/soft_tifa_gm"]["mean"] == pytest.approx(100 * sum(gm.values()) / 8, rel=1e-6)
    for k in range(3, 11):
        assert m[f"geneval2/atoms/{k}"]["mean"] == pytest.approx(100 * gm[k], rel=1e-6) and m[f"geneval2/atoms/{k}"]["n"] == 1
    objects = [s for k, p in firsts.items() for s, skill in zip(per_prompt[k], p.metadata["skills"]) if skill == "object"]
    assert m["geneval2/skill/object"]["mean"] == pytest.approx(100 * sum(objects) / len(objects), rel=1e-6)
