from rlyard.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MetaCognition(_message.Message):
    __slots__ = ("id", "text", "utility", "task_type", "uses", "source_path_ids", "created_at", "updated_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    UTILITY_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PATH_IDS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    utility: float
    task_type: str
    uses: int
    source_path_ids: _containers.RepeatedScalarFieldContainer[str]
    created_at: float
    updated_at: float
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ..., utility: _Optional[float] = ..., task_type: _Optional[str] = ..., uses: _Optional[int] = ..., source_path_ids: _Optional[_Iterable[str]] = ..., created_at: _Optional[float] = ..., updated_at: _Optional[float] = ...) -> None: ...

class ScoredMetaCognition(_message.Message):
    __slots__ = ("meta_cognition", "score", "relevance")
    META_COGNITION_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RELEVANCE_FIELD_NUMBER: _ClassVar[int]
    meta_cognition: MetaCognition
    score: float
    relevance: float
    def __init__(self, meta_cognition: _Optional[_Union[MetaCognition, _Mapping]] = ..., score: _Optional[float] = ..., relevance: _Optional[float] = ...) -> None: ...

class DecisionPath(_message.Message):
    __slots__ = ("id", "states", "reward", "trajectory_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    TRAJECTORY_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    states: _containers.RepeatedScalarFieldContainer[str]
    reward: float
    trajectory_id: str
    def __init__(self, id: _Optional[str] = ..., states: _Optional[_Iterable[str]] = ..., reward: _Optional[float] = ..., trajectory_id: _Optional[str] = ...) -> None: ...

class RecordTrajectoryRequest(_message.Message):
    __slots__ = ("trajectory", "reward", "task_type", "task_text")
    TRAJECTORY_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    TASK_TEXT_FIELD_NUMBER: _ClassVar[int]
    trajectory: _common_pb2.Trajectory
    reward: float
    task_type: str
    task_text: str
    def __init__(self, trajectory: _Optional[_Union[_common_pb2.Trajectory, _Mapping]] = ..., reward: _Optional[float] = ..., task_type: _Optional[str] = ..., task_text: _Optional[str] = ...) -> None: ...

class RecordTrajectoryResponse(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: DecisionPath
    def __init__(self, path: _Optional[_Union[DecisionPath, _Mapping]] = ...) -> None: ...

class RetrieveRequest(_message.Message):
    __slots__ = ("task_text", "task_type", "top_k")
    TASK_TEXT_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    task_text: str
    task_type: str
    top_k: int
    def __init__(self, task_text: _Optional[str] = ..., task_type: _Optional[str] = ..., top_k: _Optional[int] = ...) -> None: ...

class RetrieveResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ScoredMetaCognition]
    def __init__(self, items: _Optional[_Iterable[_Union[ScoredMetaCognition, _Mapping]]] = ...) -> None: ...

class UtilityUpdate(_message.Message):
    __slots__ = ("meta_cognition_id", "reward_with", "reward_without")
    META_COGNITION_ID_FIELD_NUMBER: _ClassVar[int]
    REWARD_WITH_FIELD_NUMBER: _ClassVar[int]
    REWARD_WITHOUT_FIELD_NUMBER: _ClassVar[int]
    meta_cognition_id: str
    reward_with: float
    reward_without: float
    def __init__(self, meta_cognition_id: _Optional[str] = ..., reward_with: _Optional[float] = ..., reward_without: _Optional[float] = ...) -> None: ...

class UpdateUtilityRequest(_message.Message):
    __slots__ = ("updates", "learning_rate")
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    updates: _containers.RepeatedCompositeFieldContainer[UtilityUpdate]
    learning_rate: float
    def __init__(self, updates: _Optional[_Iterable[_Union[UtilityUpdate, _Mapping]]] = ..., learning_rate: _Optional[float] = ...) -> None: ...

class UpdateUtilityResponse(_message.Message):
    __slots__ = ("updated",)
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    updated: _containers.RepeatedCompositeFieldContainer[MetaCognition]
    def __init__(self, updated: _Optional[_Iterable[_Union[MetaCognition, _Mapping]]] = ...) -> None: ...

class DistillRequest(_message.Message):
    __slots__ = ("task_type", "min_paths", "max_new")
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    MIN_PATHS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_FIELD_NUMBER: _ClassVar[int]
    task_type: str
    min_paths: int
    max_new: int
    def __init__(self, task_type: _Optional[str] = ..., min_paths: _Optional[int] = ..., max_new: _Optional[int] = ...) -> None: ...

class DistillResponse(_message.Message):
    __slots__ = ("created",)
    CREATED_FIELD_NUMBER: _ClassVar[int]
    created: _containers.RepeatedCompositeFieldContainer[MetaCognition]
    def __init__(self, created: _Optional[_Iterable[_Union[MetaCognition, _Mapping]]] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("num_trajectories", "num_states", "num_paths", "num_meta_cognitions", "mean_utility")
    NUM_TRAJECTORIES_FIELD_NUMBER: _ClassVar[int]
    NUM_STATES_FIELD_NUMBER: _ClassVar[int]
    NUM_PATHS_FIELD_NUMBER: _ClassVar[int]
    NUM_META_COGNITIONS_FIELD_NUMBER: _ClassVar[int]
    MEAN_UTILITY_FIELD_NUMBER: _ClassVar[int]
    num_trajectories: int
    num_states: int
    num_paths: int
    num_meta_cognitions: int
    mean_utility: float
    def __init__(self, num_trajectories: _Optional[int] = ..., num_states: _Optional[int] = ..., num_paths: _Optional[int] = ..., num_meta_cognitions: _Optional[int] = ..., mean_utility: _Optional[float] = ...) -> None: ...
