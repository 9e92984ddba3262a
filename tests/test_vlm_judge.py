"""The VLM verifier (SANA 1.5's NVILA judge): official prompt, case-insensitive yes/no, first generated token's
scores, batched judging, and custom-code verifiers behind `trust_remote_code`. Tiny random models, saved locally."""

import json

import pytest
import torch
from PIL import Image
from tiny_models import save_tiny_llava

from sana_lightning.factory import make_judge
from sana_lightning.inference_scaling import VLMJudge

SPELLINGS = {"yes": ("yes", "Yes", "YES"), "no": ("no", "No", "NO")}


@pytest.fixture(scope="module")
def cased_vlm(tmp_path_factory):
    """A tiny Llava whose word-level tokenizer keeps case and leading spaces apart: "yes", "Yes", " Yes" ... are
    different tokens (the shared `tiny_vlm` lowercases everything, so it could not tell them apart)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("cased-vlm")
    words = [w for spellings in SPELLINGS.values() for w in spellings] + ["answer:", "a", "red", "blue", "circle"]
    words += ["image", "prompt", "the", "Is", "this", "?"]
    vocab = {w: i for i, w in enumerate(["[UNK]", "[PAD]", "<s>", "</s>"] + [p + w for w in words for p in ("", "▁")])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return save_tiny_llava(path, tokenizer)


@pytest.fixture(scope="module")
def custom_code_vlm(cased_vlm, tmp_path_factory):
    """The cased VLM as a custom-code model: its own config/model classes (a new model_type) in the directory,
    registered through `auto_map` as an `AutoModelForCausalLM` only (as custom verifiers such as NVILA do)."""
    import shutil

    from transformers import AutoModelForCausalLM, LlavaForConditionalGeneration

    path = tmp_path_factory.mktemp("custom") / "tiny-verifier"
    shutil.copytree(cased_vlm, path)
    (path / "configuration_tiny_verifier.py").write_text(
        "from transformers import LlavaConfig\n\n\nclass TinyVerifierConfig(LlavaConfig):\n"
        '    model_type = "tiny_verifier"\n'
    )
    (path / "modeling_tiny_verifier.py").write_text(
        "from transformers import LlavaForConditionalGeneration\n\n"
        "from .configuration_tiny_verifier import TinyVerifierConfig\n\n\n"
        "class TinyVerifierForCausalLM(LlavaForConditionalGeneration):\n    config_class = TinyVerifierConfig\n"
    )
    config = json.loads((path / "config.json").read_text())
    config |= {
        "model_type": "tiny_verifier",
        "architectures": ["TinyVerifierForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_tiny_verifier.TinyVerifierConfig",
            "AutoModelForCausalLM": "modeling_tiny_verifier.TinyVerifierForCausalLM",
        },
    }
    (path / "config.json").write_text(json.dumps(config))
    # Saved by its own class, so the weights' names are the custom model's (Llava's legacy renames are Llava's).
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
    model.load_state_dict(LlavaForConditionalGeneration.from_pretrained(cased_vlm).state_dict())
    model.save_pretrained(path)
    return path


def images(n):
    return [Image.new("RGB", (32 + 4 * i, 32), ((60 * i) % 256, 255 - 40 * i, 90)) for i in range(n)]


def test_the_official_verifier_prompt_is_the_default():
    assert VLMJudge.OFFICIAL_PROMPT == (
        "You are an AI assistant specializing in image analysis and ranking. Your task is to analyze and compare "
        "image based on how well they match the given prompt. The given prompt is:{prompt}. Please consider the "
        "prompt and the image to make a decision and response directly with 'yes' or 'no'."
    )


def test_yes_no_ids_cover_case_and_leading_space(cased_vlm):
    judge = VLMJudge(str(cased_vlm))
    assert judge.question == VLMJudge.OFFICIAL_PROMPT
    tokenizer = judge.processor.tokenizer
    for answer, spellings in SPELLINGS.items():
        expected = {tokenizer(p + w, add_special_tokens=False).input_ids[0] for w in spellings for p in ("", " ")}
        assert len(expected) == 6 and set(judge.answer_ids[answer]) == expected


def test_first_generated_token_scores_are_the_last_position_logits_of_a_forward(cased_vlm):
    judge = VLMJudge(str(cased_vlm))
    pairs = [("a red circle", images(1)[0])]
    with torch.no_grad():
        forward = judge.model(**judge.inputs(pairs)).logits[:, -1].float()
    assert torch.allclose(judge.first_token_scores(pairs), forward, atol=1e-6, rtol=0)


@pytest.mark.parametrize("spelling, says_yes", [(" Yes", True), ("Yes", True), (" No", False), ("NO", False)])
def test_a_capitalised_or_spaced_answer_decides_the_verdict(cased_vlm, spelling, says_yes):
    judge = VLMJudge(str(cased_vlm))
    tokenizer = judge.processor.tokenizer
    (token,) = tokenizer(spelling, add_special_tokens=False).input_ids
    assert token not in [tokenizer.convert_tokens_to_ids(w) for w in ("yes", "no")]  # not the lowercase ids
    head = judge.model.get_output_embeddings()
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.zero_()[token] = 8.0  # this spelling now dominates the first answer token
    judge.model.set_output_embeddings(biased)
    pairs = [("a red circle", image) for image in images(3)]
    verdicts = judge.judge([image for _, image in pairs], "a red circle")
    with torch.no_grad():
        probs = torch.softmax(judge.model(**judge.inputs(pairs)).logits[:, -1].float(), dim=-1)
    for verdict, p in zip(verdicts, probs):
        assert verdict.yes is says_yes and max(verdict.p_yes, verdict.p_no) > 0.5
        assert verdict.p_yes == pytest.approx(p[judge.answer_ids["yes"]].sum().item(), abs=1e-6)
        assert verdict.p_no == pytest.approx(p[judge.answer_ids["no"]].sum().item(), abs=1e-6)


def test_batched_judging_equals_one_by_one(cased_vlm):
    pairs = list(zip(["a red circle", "Is this a blue circle ?", "red", "the image a red prompt"], images(4)))
    batched = VLMJudge(str(cased_vlm), batch_size=3)
    inputs = batched.inputs(pairs[:3])
    assert (inputs["attention_mask"][:, 0] == 0).any() and (inputs["attention_mask"][:, -1] == 1).all()  # left pad
    together = batched.judge_pairs(pairs)
    alone = VLMJudge(str(cased_vlm), batch_size=1).judge_pairs(pairs)
    for a, b in zip(together, alone):
        assert a.yes == b.yes and abs(a.p_yes - b.p_yes) < 1e-5 and abs(a.p_no - b.p_no) < 1e-5


def test_question_replaces_the_official_prompt(cased_vlm):
    judge = VLMJudge(str(cased_vlm), question="Is this {prompt} ?")
    text = judge.processor.tokenizer.decode(judge.inputs([("a red circle", images(1)[0])])["input_ids"][0])
    assert "Is this a red circle ?" in text and "AI assistant" not in text
    with pytest.raises(ValueError, match="has no {prompt}"):
        VLMJudge(str(cased_vlm), question="Is this right?")


def test_custom_code_verifier_runs_only_with_trust_remote_code(cased_vlm, custom_code_vlm):
    with pytest.raises(ValueError, match="add --trust_remote_code true") as error:
        make_judge("vlm", str(custom_code_vlm), [])
    assert "\n" not in str(error.value)
    judge = make_judge("vlm", str(custom_code_vlm), [], trust_remote_code=True)
    assert type(judge.model).__name__ == "TinyVerifierForCausalLM"  # found as AutoModelForCausalLM
    pairs = list(zip(["a red circle", "blue"], images(2)))
    for a, b in zip(judge.judge_pairs(pairs), VLMJudge(str(cased_vlm)).judge_pairs(pairs)):
        assert a.yes == b.yes and abs(a.p_yes - b.p_yes) < 1e-5 and abs(a.p_no - b.p_no) < 1e-5
    with pytest.raises(ValueError, match="--question is the vlm judge's"):
        make_judge("oracle", None, [], question="Is this {prompt}?")
