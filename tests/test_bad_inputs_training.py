"""Bad inputs to the training, checkpoint, precision, data and pretrain modules get clear errors.

Each row: a call, the exception it must raise, and a phrase its message must contain (naming the
argument, the value received or what is allowed). Training must also change nothing when it refuses.
"""

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils import checkpoint, data, precision, pretrain, training
from utils.training import TrainConfig


from tiny_models import TinyConfig, TinyLM  # noqa: E402


STREAM = torch.arange(200) % 16
QUIET = dict(progress=False, max_steps=2, eval_iters=1, warmup_steps=0)


def _cfg(**kw):
    return TrainConfig(**{**QUIET, **kw})


def _train(*args, **kw):
    model = kw.pop("model", None) or TinyLM()
    config = kw.pop("config", _cfg())
    return training.train(model, *args, config=config, **kw)


def _saved(tmp):
    path = Path(tmp) / "tiny.pt"
    checkpoint.save_checkpoint(path, TinyLM())
    return path


_TMP: list[Path] = []


def _tmp() -> Path:
    """A scratch folder for this module's rows (removed by the fixture below)."""
    return _TMP[0]


@pytest.fixture(autouse=True, scope="module")
def _scratch(tmp_path_factory):
    _TMP.append(tmp_path_factory.mktemp("bad_inputs"))
    yield
    _TMP.clear()


EMPTY = data.Corpus([])

CASES = [
    # ---- TrainConfig
    ("TrainConfig(warmup_steps=2.5)", lambda: TrainConfig(warmup_steps=2.5), ValueError, "warmup_steps must be an int >= 0, got 2.5"),
    ("TrainConfig(weight_decay=-1)", lambda: TrainConfig(weight_decay=-1), ValueError, "weight_decay must be a finite number >= 0, got -1"),
    ("TrainConfig(betas=(0.9,))", lambda: TrainConfig(betas=(0.9,)), ValueError, "betas must be two numbers in [0, 1)"),
    ("TrainConfig(betas=(0.9, 1.5))", lambda: TrainConfig(betas=(0.9, 1.5)), ValueError, "got (0.9, 1.5)"),
    ("TrainConfig(betas='0.9,0.99')", lambda: TrainConfig(betas="0.9,0.99"), ValueError, "betas"),
    ("TrainConfig(eval_interval=-1)", lambda: TrainConfig(eval_interval=-1), ValueError, "eval_interval must be an int >= 0"),
    ("TrainConfig(eval_iters=0)", lambda: TrainConfig(eval_iters=0), ValueError, "eval_iters must be an int >= 1, got 0"),
    ("TrainConfig(eval_batch_size=0)", lambda: TrainConfig(eval_batch_size=0), ValueError, "eval_batch_size must be None or an int >= 1"),
    ("TrainConfig(block_size=8.0)", lambda: TrainConfig(block_size=8.0), ValueError, "block_size must be None or an int >= 1, got 8.0"),
    ("TrainConfig(max_steps=True)", lambda: TrainConfig(max_steps=True), ValueError, "max_steps must be an int >= 1, got True"),
    ("TrainConfig(log_interval=0)", lambda: TrainConfig(log_interval=0), ValueError, "log_interval"),
    ("TrainConfig(lr=nan)", lambda: TrainConfig(lr=float("nan")), ValueError, "lr must be a finite number > 0, got nan"),
    ("TrainConfig(lr=0)", lambda: TrainConfig(lr=0), ValueError, "lr must be a finite number > 0, got 0"),
    ("TrainConfig(min_lr > lr)", lambda: TrainConfig(lr=1e-3, min_lr=1e-2), ValueError, "0 <= min_lr <= lr=0.001"),
    ("TrainConfig(grad_clip=0)", lambda: TrainConfig(grad_clip=0), ValueError, "grad_clip must be a number > 0, or None"),
    ("TrainConfig(grad_clip=inf)", lambda: TrainConfig(grad_clip=float("inf")), ValueError, "got inf"),
    ("TrainConfig(time_budget_s=-1)", lambda: TrainConfig(time_budget_s=-1), ValueError, "time_budget_s must be seconds > 0"),
    ("TrainConfig(precision='int8')", lambda: TrainConfig(precision="int8"), ValueError, "precision must be one of"),
    ("TrainConfig(sampling='shuffled')", lambda: TrainConfig(sampling="shuffled"), ValueError, "sampling must be one of"),
    ("TrainConfig(compile='yes')", lambda: TrainConfig(compile="yes"), TypeError, "compile must be True or False"),
    ("TrainConfig(seed=-1)", lambda: TrainConfig(seed=-1), ValueError, "seed must be an int in [0, 2**63)"),
    ("TrainConfig(seed=2**70)", lambda: TrainConfig(seed=2**70), ValueError, "seed must be an int in [0, 2**63)"),
    # ---- lr_schedule, configure_optimizer, estimate_loss, gradient checkpointing
    ("lr_schedule(step=-1)", lambda: training.lr_schedule(-1, lr=1e-3, min_lr=0, warmup_steps=0, total_steps=9), ValueError, "step must be an int >= 0, got -1"),
    ("lr_schedule(step=1.5)", lambda: training.lr_schedule(1.5, lr=1e-3, min_lr=0, warmup_steps=0, total_steps=9), ValueError, "got 1.5"),
    ("lr_schedule(total_steps=nan)", lambda: training.lr_schedule(1, lr=1e-3, min_lr=0, warmup_steps=0, total_steps=float("nan")), ValueError, "total_steps"),
    ("lr_schedule(warmup_steps=2.5)", lambda: training.lr_schedule(1, lr=1e-3, min_lr=0, warmup_steps=2.5, total_steps=9), ValueError, "warmup_steps"),
    ("configure_optimizer(lr=-1)", lambda: training.configure_optimizer(TinyLM(), -1, 0.1), ValueError, "lr must be a finite number > 0, got -1"),
    ("configure_optimizer(model=list)", lambda: training.configure_optimizer([], 1e-3, 0.1), TypeError, "model must be a torch.nn.Module"),
    ("estimate_loss(eval_iters=0)", lambda: training.estimate_loss(TinyLM(), lambda s: None, eval_iters=0), ValueError, "eval_iters must be an int >= 1"),
    ("estimate_loss(splits=[])", lambda: training.estimate_loss(TinyLM(), lambda s: None, splits=[]), ValueError, "splits must be a non-empty list"),
    ("estimate_loss(get_batch=None)", lambda: training.estimate_loss(TinyLM(), None), TypeError, "get_batch must be a function"),
    ("enable_gradient_checkpointing(5)", lambda: training.enable_gradient_checkpointing(5), TypeError, "blocks must be an iterable of nn.Modules"),
    ("enable_gradient_checkpointing(enabled='no')", lambda: training.enable_gradient_checkpointing([nn.Linear(2, 2)], "no"), TypeError, "enabled must be True or False"),
    # ---- train()
    ("train(model='gpt')", lambda: training.train("gpt", STREAM), TypeError, "model must be a torch.nn.Module, got str"),
    ("train(config=dict)", lambda: _train(STREAM, config={"max_steps": 1}), TypeError, "config must be a TrainConfig"),
    ("train(train_data=list)", lambda: _train([1, 2, 3] * 20), ValueError, "train_data must be a 1-D tensor of token ids, got list"),
    ("train(train_data=floats)", lambda: _train(torch.rand(100)), ValueError, "train_data must hold integer token ids"),
    ("train(val_data too short)", lambda: _train(STREAM, torch.arange(5)), ValueError, "val_data has 5 tokens, too few for block_size=8"),
    ("train(ids beyond vocab)", lambda: _train(torch.arange(100)), ValueError, "token ids in [0, 99], but the model's vocabulary has 16"),
    ("train(device='gpu')", lambda: _train(STREAM, device="gpu"), ValueError, "device='gpu' is not a device"),
    ("train(device=0)", lambda: _train(STREAM, device=0), TypeError, "device must be a str such as 'cpu' or a torch.device, got int"),
    ("train(get_batch + train_data)", lambda: _train(STREAM, get_batch=lambda s: None), ValueError, "not both"),
    ("train(no data)", lambda: _train(), ValueError, "pass train_data"),
    ("train(callback=5)", lambda: _train(STREAM, callback=5), TypeError, "callback must be a function or None, got int"),
    ("train(compute_loss=None)", lambda: _train(STREAM, compute_loss=None), TypeError, "compute_loss must be a function"),
    ("train(param_groups='all')", lambda: _train(STREAM, param_groups="all"), TypeError, "param_groups must be a list of dicts"),
    ("train(block_size > model's)", lambda: _train(STREAM, config=_cfg(block_size=64)), ValueError, "block_size=64 exceeds the model's block_size=8"),
    ("train(all parameters frozen)", lambda: _train(STREAM, model=TinyLM().requires_grad_(False)), ValueError, "no parameter with requires_grad=True"),
    # ---- precision
    ("resolve_precision('cpu', 'fp8')", lambda: precision.resolve_precision("cpu", "fp8"), ValueError, "precision must be one of"),
    ("autocast_context('gpu')", lambda: precision.autocast_context("gpu", "bf16"), ValueError, "device='gpu' is not a device"),
    ("as_device(3)", lambda: precision.as_device(3), TypeError, "device must be a str"),
    # ---- data: batches
    ("get_batch(device='gpu')", lambda: data.get_batch(STREAM, 2, 8, device="gpu"), ValueError, "device='gpu' is not a device; use 'cpu', 'cuda'"),
    ("get_batch(generator=42)", lambda: data.get_batch(STREAM, 2, 8, generator=42), TypeError, "generator must be a torch.Generator or None, got int"),
    ("get_batch(batch_size=0)", lambda: data.get_batch(STREAM, 0, 8), ValueError, "batch_size=0"),
    ("get_batch(complex data)", lambda: data.get_batch(torch.zeros(50, dtype=torch.complex64), 2, 8), ValueError, "integer token ids"),
    ("EpochSampler(device='gpu')", lambda: data.EpochSampler(STREAM, 2, 8, device="gpu"), ValueError, "device='gpu' is not a device"),
    ("EpochSampler(generator='seed')", lambda: data.EpochSampler(STREAM, 2, 8, generator="seed"), TypeError, "generator must be a torch.Generator"),
    ("EpochSampler(block_size=8.5)", lambda: data.EpochSampler(STREAM, 2, 8.5), ValueError, "block_size=8.5"),
    # ---- data: corpus
    ("Corpus([1, 2])", lambda: data.Corpus([1, 2]), TypeError, "passages must be a list of Passage"),
    ("Corpus.text('dev')", lambda: EMPTY.text("dev"), ValueError, "unknown split 'dev'"),
    ("Corpus.plays('dev')", lambda: EMPTY.plays("dev"), ValueError, "unknown split 'dev'"),
    ("Corpus.filter(genre=3)", lambda: EMPTY.filter(genre=3), TypeError, "filter(genre=...) must be a str"),
    ("Corpus.filter(colour='red')", lambda: EMPTY.filter(colour="red"), ValueError, "unknown Passage field"),
    ("Corpus.genre_counts('words')", lambda: EMPTY.genre_counts("words"), ValueError, "unit must be 'characters' or 'passages', got 'words'"),
    ("parse_play(genre='poems')", lambda: data.parse_play("", "x", "poems", "train"), ValueError, "unknown genre 'poems'"),
    ("parse_play(markdown=bytes)", lambda: data.parse_play(b"# x", "x", "comedies", "train"), TypeError, "markdown must be a str"),
    ("parse_play(split='dev')", lambda: data.parse_play("", "x", "comedies", "dev"), ValueError, "unknown split"),
    ("load_corpus(rebuild='yes')", lambda: data.load_corpus(rebuild="yes"), TypeError, "rebuild must be True or False"),
    ("load_corpus(expected_sha256='XYZ')", lambda: data.load_corpus(expected_sha256="XYZ"), ValueError, "expected_sha256 must be None or a lowercase hex"),
    ("load_corpus(cache_dir=5)", lambda: data.load_corpus(cache_dir=5), TypeError, "cache_dir must be None or a folder path"),
    ("load_tinyshakespeare(timeout=0)", lambda: data.load_tinyshakespeare(timeout=0), ValueError, "timeout must be a number of seconds > 0"),
    ("load_tinyshakespeare(url='ftp://x')", lambda: data.load_tinyshakespeare(url="ftp://x"), ValueError, "url must be an http(s) URL"),
    ("load_tinyshakespeare(allow_download='no')", lambda: data.load_tinyshakespeare(allow_download="no"), TypeError, "allow_download must be True or False"),
    # ---- checkpoint
    ("save_checkpoint(path=5)", lambda: checkpoint.save_checkpoint(5, TinyLM()), TypeError, "path must be a non-empty str or pathlib.Path, got int"),
    ("save_checkpoint(model='x')", lambda: checkpoint.save_checkpoint(Path(_tmp()) / "a.pt", "x"), TypeError, "model must be a torch.nn.Module"),
    ("save_checkpoint(metadata=list)", lambda: checkpoint.save_checkpoint(Path(_tmp()) / "a.pt", TinyLM(), metadata=[1]), TypeError, "metadata must be a dict or None, got list"),
    ("save_checkpoint(metadata Path)", lambda: checkpoint.save_checkpoint(Path(_tmp()) / "a.pt", TinyLM(), metadata={"p": Path("x")}), TypeError, "metadata['p'] is a PosixPath"),
    ("save_checkpoint(dtype=int8)", lambda: checkpoint.save_checkpoint(Path(_tmp()) / "a.pt", TinyLM(), dtype=torch.int8), ValueError, "dtype=torch.int8 is not a floating-point dtype"),
    ("save_checkpoint(tokenizer=5)", lambda: checkpoint.save_checkpoint(Path(_tmp()) / "a.pt", TinyLM(), tokenizer=5), TypeError, "tokenizer must be None, a str, or have a .save(path) method"),
    ("load_checkpoint(dtype='half-ish')", lambda: checkpoint.load_checkpoint(_saved(_tmp()), model_cls=TinyLM, dtype="half-ish"), ValueError, "dtype='half-ish' is not a floating-point dtype name"),
    ("load_checkpoint(dtype=16)", lambda: checkpoint.load_checkpoint(_saved(_tmp()), model_cls=TinyLM, dtype=16), TypeError, "dtype must be a torch floating dtype"),
    ("load_checkpoint(prepare=5)", lambda: checkpoint.load_checkpoint(_saved(_tmp()), model_cls=TinyLM, prepare=5), TypeError, "prepare must be a function"),
    ("load_checkpoint(model='x')", lambda: checkpoint.load_checkpoint(_saved(_tmp()), "x"), TypeError, "model must be a torch.nn.Module or None"),
    ("load_checkpoint(model + model_cls)", lambda: checkpoint.load_checkpoint(_saved(_tmp()), TinyLM(), model_cls=TinyLM), ValueError, "not both"),
    ("load_checkpoint(prepare returns 5)", lambda: checkpoint.load_checkpoint(_saved(_tmp()), model_cls=TinyLM, prepare=lambda m: 5), TypeError, "prepare returned int"),
    ("read_checkpoint(map_location='gpu')", lambda: checkpoint.read_checkpoint(_saved(_tmp()), map_location="gpu"), ValueError, "map_location='gpu' is not a device"),
    ("weights_sha256(list)", lambda: checkpoint.weights_sha256([1]), TypeError, "state_dict must be a mapping"),
    ("weights_sha256(non-tensor value)", lambda: checkpoint.weights_sha256({"w": [1.0]}), TypeError, "entry 'w' holds list"),
    ("file_sha256(missing)", lambda: checkpoint.file_sha256(Path(_tmp()) / "nope"), FileNotFoundError, "no file at"),
    ("text_sha256(bytes)", lambda: checkpoint.text_sha256(b"x"), TypeError, "text must be a str, got bytes"),
    ("atomic_write_bytes(str)", lambda: checkpoint.atomic_write_bytes(Path(_tmp()) / "a", "x"), TypeError, "data must be bytes, got str"),
    ("atomic_write_text(bytes)", lambda: checkpoint.atomic_write_text(Path(_tmp()) / "a", b"x"), TypeError, "text must be a str, got bytes"),
    ("atomic_write(write=None)", lambda: checkpoint.atomic_write(Path(_tmp()) / "a", None), TypeError, "write must be a function"),
    # ---- pretrain
    ("Recipe(precision='fp8')", lambda: pretrain.Recipe(precision="fp8"), ValueError, "Recipe: TrainConfig.precision must be one of"),
    ("Recipe(vocab_size=1)", lambda: pretrain.Recipe(vocab_size=1), ValueError, "Recipe.vocab_size must be None (characters) or an int >= 2"),
    ("Recipe(warmup_steps=2.5)", lambda: pretrain.Recipe(warmup_steps=2.5), ValueError, "warmup_steps must be an int >= 0, got 2.5"),
    ("Recipe.with_(lr_rate=1)", lambda: pretrain.COURSE_RECIPE.with_(lr_rate=1), ValueError, "Recipe has no field(s) ['lr_rate']"),
    ("training_text('text')", lambda: pretrain.training_text("text", "train"), TypeError, "corpus must be a utils.data.Corpus"),
    ("training_text(split='dev')", lambda: pretrain.training_text(EMPTY, "dev"), ValueError, "unknown split 'dev'"),
    ("train_course_tokenizer('')", lambda: pretrain.train_course_tokenizer("", 512), ValueError, "text must be a non-empty str"),
    ("train_course_tokenizer(vocab 100)", lambda: pretrain.train_course_tokenizer("abc", 100), ValueError, "vocab_size must be an int >= 257"),
    ("load_course_model(path=5)", lambda: pretrain.load_course_model(5), TypeError, "path must be None or a checkpoint path"),
    ("load_course_model(device='gpu')", lambda: pretrain.load_course_model(device="gpu"), ValueError, "device='gpu' is not a device"),
]


@pytest.mark.parametrize("call, error, phrase", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_a_clear_error(call, error, phrase):
    with pytest.raises(error) as info:
        call()
    assert phrase in str(info.value), f"message {str(info.value)!r} lacks {phrase!r}"


def test_there_are_at_least_thirty_bad_inputs():
    assert len(CASES) >= 30


def test_cuda_requested_on_a_machine_without_it_is_named():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        _train(STREAM, device="cuda")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        data.get_batch(STREAM, 2, 8, device="cuda")


@pytest.mark.parametrize("bad", [dict(val_data=torch.arange(5)), dict(param_groups=lambda m: [{"params": [m.head.bias]}]),
                                 dict(device="gpu"), dict(config=_cfg(block_size=64))])
def test_a_refused_training_run_changes_nothing(bad):
    torch.manual_seed(0)
    model = TinyLM().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    val = bad.pop("val_data", None)
    with pytest.raises((ValueError, TypeError)):
        _train(STREAM, val, model=model, **bad)
    assert not model.training  # train() puts the model in training mode only once the inputs are accepted
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_loading_with_a_bad_dtype_leaves_the_given_model_untouched(tmp_path):
    path = _saved(tmp_path)
    model = TinyLM()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError):
        checkpoint.load_checkpoint(path, model, dtype="half-ish")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
