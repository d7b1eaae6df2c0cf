import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """Everything in tests/integration is slow: ``-m "not slow"`` runs tests/unit and tests/plugins."""
    for item in items:
        if item.path.parent.name == "integration":
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(0)


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield


WORDS = ("the a cat dog sat ran on under mat rug big small red blue quickly slowly and then "
         "def return import class if else for while print value list dict").split()


def write_corpus(folder, n_docs=40, words_per_doc=120, seed=0):
    """Deterministic text files of the tiny model's vocabulary, for the text-files data source."""
    import random

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        (folder / f"doc{i:03d}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(words_per_doc)))
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """A 2-layer Llama (d_model 32) with a byte-level tokenizer, saved like any Hugging Face model folder."""
    from saebench.testing.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"), n_layers=2, d_model=32)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture
def one_thread():
    """Torch on one thread: for tiny tensors it is as fast, and immune to other processes on the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
