"""Security vectors, as one package (the way a PEFT tuner is one): their config, training, attach / scale /
freeze, folding, the with-vectors fine-tuning, the serving context and the Trainer drop-in.

Nothing outside this package knows how the vectors are named, folded, scaled or switched off.
"""

from .augment import style_texts as defence_style_texts
from .callback import SecurityVectorsCallback
from .config import DEFAULT_SCALE, PLAIN_SCALE, RECOMMENDED_SCALE, VectorConfig, recommended
from .finetuning import finetune, serving, train_beside_vectors
from .fold import FOLDED_ATTR, FoldedVectors
from .layers import VECTORS_ADAPTER, freeze_vectors, set_vector_scale, vector_layers, vector_params
from .model import FORMAT, META_FILE, SecurityVectors
from .model import check_folder as check_vectors_folder

__all__ = ["DEFAULT_SCALE", "FOLDED_ATTR", "FORMAT", "META_FILE", "PLAIN_SCALE", "RECOMMENDED_SCALE", "VECTORS_ADAPTER",
           "FoldedVectors", "SecurityVectors", "SecurityVectorsCallback", "check_vectors_folder",
           "VectorConfig", "finetune", "freeze_vectors",
           "recommended", "serving", "set_vector_scale", "train_beside_vectors", "vector_layers", "vector_params",
           "defence_style_texts"]
