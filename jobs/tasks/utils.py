"""Hooks the task YAMLs name with `!function`; each reuses lm-eval's own code on our field names."""

import datasets
from lm_eval.tasks.hellaswag.utils import preprocess
from lm_eval.tasks.winogrande.preprocess_winogrande import (  # noqa: F401  (named by winogrande.yaml)
    doc_to_choice as winogrande_doc_to_choice,
    doc_to_target as winogrande_doc_to_target,
    doc_to_text as winogrande_doc_to_text,
)


def hellaswag_process_docs(dataset):
    """lm-eval's hellaswag `process_docs`, reading our `choices` field where it reads `endings`."""

    def process(doc):
        ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        return {
            "query": preprocess(doc["activity_label"] + ": " + ctx),
            "choices": [preprocess(ending) for ending in doc["choices"]],
            "gold": int(doc["label"]),
        }

    return dataset.map(process)


def load_local_splits(data_files: dict[str, str], **_metadata) -> datasets.DatasetDict:
    """Each split's JSONL loaded on its own: splits of one task may carry different extra fields
    (BoolQ train has no passage), which one `load_dataset("json")` call cannot cast together."""
    return datasets.DatasetDict(
        {split: datasets.load_dataset("json", data_files=path, split="train") for split, path in data_files.items()}
    )
