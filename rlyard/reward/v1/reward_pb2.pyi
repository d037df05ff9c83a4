from rlyard.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RewardKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REWARD_KIND_UNSPECIFIED: _ClassVar[RewardKind]
    REWARD_KIND_RULE: _ClassVar[RewardKind]
    REWARD_KIND_TOOL_VERIFICATION: _ClassVar[RewardKind]
    REWARD_KIND_MODEL_JUDGE: _ClassVar[RewardKind]
    REWARD_KIND_COMPOSITE: _ClassVar[RewardKind]

class ScoreStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCORE_STATUS_UNSPECIFIED: _ClassVar[ScoreStatus]
    SCORE_STATUS_OK: _ClassVar[ScoreStatus]
    SCORE_STATUS_SYSTEM_ERROR: _ClassVar[ScoreStatus]
    SCORE_STATUS_INVALID_INPUT: _ClassVar[ScoreStatus]
REWARD_KIND_UNSPECIFIED: RewardKind
REWARD_KIND_RULE: RewardKind
REWARD_KIND_TOOL_VERIFICATION: RewardKind
REWARD_KIND_MODEL_JUDGE: RewardKind
REWARD_KIND_COMPOSITE: RewardKind
SCORE_STATUS_UNSPECIFIED: ScoreStatus
SCORE_STATUS_OK: ScoreStatus
SCORE_STATUS_SYSTEM_ERROR: ScoreStatus
SCORE_STATUS_INVALID_INPUT: ScoreStatus

class RewardInfo(_message.Message):
    __slots__ = ("name", "description", "kind", "params_json_schema")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    kind: RewardKind
    params_json_schema: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., kind: _Optional[_Union[RewardKind, str]] = ..., params_json_schema: _Optional[str] = ...) -> None: ...

class ListRewardsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRewardsResponse(_message.Message):
    __slots__ = ("rewards",)
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    rewards: _containers.RepeatedCompositeFieldContainer[RewardInfo]
    def __init__(self, rewards: _Optional[_Iterable[_Union[RewardInfo, _Mapping]]] = ...) -> None: ...

class RewardTerm(_message.Message):
    __slots__ = ("name", "weight", "params_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    weight: float
    params_json: str
    def __init__(self, name: _Optional[str] = ..., weight: _Optional[float] = ..., params_json: _Optional[str] = ...) -> None: ...

class RewardSpec(_message.Message):
    __slots__ = ("terms",)
    TERMS_FIELD_NUMBER: _ClassVar[int]
    terms: _containers.RepeatedCompositeFieldContainer[RewardTerm]
    def __init__(self, terms: _Optional[_Iterable[_Union[RewardTerm, _Mapping]]] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("item_id", "trajectory", "prediction", "ground_truth_json", "spec", "training_step")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TRAJECTORY_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    GROUND_TRUTH_JSON_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    TRAINING_STEP_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    trajectory: _common_pb2.Trajectory
    prediction: str
    ground_truth_json: str
    spec: RewardSpec
    training_step: int
    def __init__(self, item_id: _Optional[str] = ..., trajectory: _Optional[_Union[_common_pb2.Trajectory, _Mapping]] = ..., prediction: _Optional[str] = ..., ground_truth_json: _Optional[str] = ..., spec: _Optional[_Union[RewardSpec, _Mapping]] = ..., training_step: _Optional[int] = ...) -> None: ...

class RewardComponent(_message.Message):
    __slots__ = ("name", "value", "weight", "explanation", "status")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    weight: float
    explanation: str
    status: ScoreStatus
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ..., weight: _Optional[float] = ..., explanation: _Optional[str] = ..., status: _Optional[_Union[ScoreStatus, str]] = ...) -> None: ...

class StepReward(_message.Message):
    __slots__ = ("turn_index", "value", "component")
    TURN_INDEX_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    COMPONENT_FIELD_NUMBER: _ClassVar[int]
    turn_index: int
    value: float
    component: str
    def __init__(self, turn_index: _Optional[int] = ..., value: _Optional[float] = ..., component: _Optional[str] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("item_id", "total", "components", "step_rewards", "explanation", "status", "error")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    STEP_REWARDS_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    total: float
    components: _containers.RepeatedCompositeFieldContainer[RewardComponent]
    step_rewards: _containers.RepeatedCompositeFieldContainer[StepReward]
    explanation: str
    status: ScoreStatus
    error: str
    def __init__(self, item_id: _Optional[str] = ..., total: _Optional[float] = ..., components: _Optional[_Iterable[_Union[RewardComponent, _Mapping]]] = ..., step_rewards: _Optional[_Iterable[_Union[StepReward, _Mapping]]] = ..., explanation: _Optional[str] = ..., status: _Optional[_Union[ScoreStatus, str]] = ..., error: _Optional[str] = ...) -> None: ...

class ScoreBatchRequest(_message.Message):
    __slots__ = ("items", "default_spec", "packed_items", "packed_results")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_SPEC_FIELD_NUMBER: _ClassVar[int]
    PACKED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    PACKED_RESULTS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ScoreRequest]
    default_spec: RewardSpec
    packed_items: PackedItems
    packed_results: bool
    def __init__(self, items: _Optional[_Iterable[_Union[ScoreRequest, _Mapping]]] = ..., default_spec: _Optional[_Union[RewardSpec, _Mapping]] = ..., packed_items: _Optional[_Union[PackedItems, _Mapping]] = ..., packed_results: _Optional[bool] = ...) -> None: ...

class PackedItems(_message.Message):
    __slots__ = ("item_ids", "predictions", "ground_truths_json", "training_steps")
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    GROUND_TRUTHS_JSON_FIELD_NUMBER: _ClassVar[int]
    TRAINING_STEPS_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    predictions: _containers.RepeatedScalarFieldContainer[str]
    ground_truths_json: str
    training_steps: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ..., predictions: _Optional[_Iterable[str]] = ..., ground_truths_json: _Optional[str] = ..., training_steps: _Optional[_Iterable[int]] = ...) -> None: ...

class ScoreBatchResponse(_message.Message):
    __slots__ = ("results", "packed")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ScoreResponse]
    packed: PackedScores
    def __init__(self, results: _Optional[_Iterable[_Union[ScoreResponse, _Mapping]]] = ..., packed: _Optional[_Union[PackedScores, _Mapping]] = ...) -> None: ...

class PackedScores(_message.Message):
    __slots__ = ("totals", "statuses", "explanations", "errors", "component_names", "component_weights", "component_values", "component_explanations", "component_statuses")
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    EXPLANATIONS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    COMPONENT_NAMES_FIELD_NUMBER: _ClassVar[int]
    COMPONENT_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    COMPONENT_VALUES_FIELD_NUMBER: _ClassVar[int]
    COMPONENT_EXPLANATIONS_FIELD_NUMBER: _ClassVar[int]
    COMPONENT_STATUSES_FIELD_NUMBER: _ClassVar[int]
    totals: _containers.RepeatedScalarFieldContainer[float]
    statuses: _containers.RepeatedScalarFieldContainer[ScoreStatus]
    explanations: _containers.RepeatedScalarFieldContainer[str]
    errors: _containers.RepeatedScalarFieldContainer[str]
    component_names: _containers.RepeatedScalarFieldContainer[str]
    component_weights: _containers.RepeatedScalarFieldContainer[float]
    component_values: _containers.RepeatedScalarFieldContainer[float]
    component_explanations: _containers.RepeatedScalarFieldContainer[str]
    component_statuses: _containers.RepeatedScalarFieldContainer[ScoreStatus]
    def __init__(self, totals: _Optional[_Iterable[float]] = ..., statuses: _Optional[_Iterable[_Union[ScoreStatus, str]]] = ..., explanations: _Optional[_Iterable[str]] = ..., errors: _Optional[_Iterable[str]] = ..., component_names: _Optional[_Iterable[str]] = ..., component_weights: _Optional[_Iterable[float]] = ..., component_values: _Optional[_Iterable[float]] = ..., component_explanations: _Optional[_Iterable[str]] = ..., component_statuses: _Optional[_Iterable[_Union[ScoreStatus, str]]] = ...) -> None: ...
