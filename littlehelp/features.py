"""Names of batch and task features: seqio's own (its feature converters' outputs, its tasks' "inputs"/"targets")."""

# A batch's features: the outputs of seqio's EncDecFeatureConverter and DecoderFeatureConverter.
ENCODER_INPUT_TOKENS = "encoder_input_tokens"
ENCODER_SEGMENT_IDS = "encoder_segment_ids"
ENCODER_POSITIONS = "encoder_positions"
DECODER_INPUT_TOKENS = "decoder_input_tokens"
DECODER_TARGET_TOKENS = "decoder_target_tokens"
DECODER_LOSS_WEIGHTS = "decoder_loss_weights"
DECODER_SEGMENT_IDS = "decoder_segment_ids"
DECODER_POSITIONS = "decoder_positions"

# A task's features: what its preprocessors yield, and what its output features and feature lengths are keyed by.
INPUTS = "inputs"
TARGETS = "targets"

# A teacher's stored soft labels per target token (`littlehelp.data.teacher_labels`), as a Task's
# examples and the feature converters' outputs carry them: its top-k ids [length, k], their
# log-probabilities [length, k] and the log of the mass on every other token [length].
TEACHER_IDS = "teacher_ids"
TEACHER_LOG_PROBS = "teacher_log_probs"
TEACHER_LOG_REST = "teacher_log_rest"
