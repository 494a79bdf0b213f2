"""keraformer.losses: EMO for language models, logit adjustment for long-tailed labels, the
multi-label losses, sparse softmax (top-k cross-entropy) and bert4keras' ``Loss`` layer
(``LossLayer``)."""

from keraformer.losses.emo import EMOLoss, emo_distance, emo_loss, emo_token_losses
from keraformer.losses.logit_adjustment import (LogitAdjustedLoss, adjust_logits,
                                                 logit_adjusted_loss)
from keraformer.losses.loss_layer import LossLayer
from keraformer.losses.multilabel import (global_pointer_crossentropy,
                                          multilabel_categorical_crossentropy)
from keraformer.losses.sparse_softmax import (SparseSoftmax, SparseSoftmaxCrossentropy,
                                              sparse_softmax, sparse_softmax_crossentropy)
