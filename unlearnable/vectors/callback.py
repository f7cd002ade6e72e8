"""Security vectors in an existing ``transformers.Trainer`` or TRL ``SFTTrainer`` script, in one line.

    vectors = SecurityVectors.load("vectors/")
    trainer = SFTTrainer(model=model, ..., callbacks=[vectors.callback(model)])
    trainer.train()              # the vectors act, frozen, in every training step
    trainer.save_model("tuned/") # ... and are gone: the saved model (or adapter) holds none of them

The callback folds the vectors into the model's own weights when it is made (:mod:`.fold`): they add no
parameter, so no optimizer, PEFT wrapper or DDP sees them. It takes them out of the weights for evaluation and
checkpoints, and for good when training ends.
"""

from __future__ import annotations

from transformers import TrainerCallback

from ..errors import UnlearnableError


class SecurityVectorsCallback(TrainerCallback):
    """Folds ``vectors`` into ``model`` (float32/float64 weights) for training; the model is served without them."""

    def __init__(self, vectors, model, scale: float | None = None):
        self.fold = vectors.fold(model, scale=scale)
        self.model = model
        self.vectors = vectors
        #: built with the training data (``SecurityVectors.callback(data=...)``): which pairs were flagged, and
        #: the screening's record; None otherwise
        self.flags: list[bool] | None = None
        self.adapted: dict | None = None

    def _trains_folded_weights(self) -> bool:
        return any(layer.get_base_layer().weight.requires_grad for layer in self.fold.layers)

    def on_train_begin(self, args, state, control, **kwargs):
        self.fold.trains_weights = self._trains_folded_weights()
        if self.fold.trains_weights and args.weight_decay:
            self.fold.restore()
            raise UnlearnableError("security vectors folded into weights that train need weight_decay=0 (decay "
                                   "would shrink the vectors too); set weight_decay=0, or train a LoRA")
        self.fold.fold()
        return control

    def on_step_begin(self, args, state, control, **kwargs):
        self.fold.fold()  # back in after an evaluation or a checkpoint
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_evaluate or control.should_save:  # evaluate and save the model as it is served
            self.fold.unfold()
        return control

    on_epoch_end = on_step_end

    def on_train_end(self, args, state, control, **kwargs):
        self.fold.restore()
        return control
