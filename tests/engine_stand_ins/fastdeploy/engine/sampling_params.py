"""Stand-in (see ../../README.md): a recording GuidedDecodingParams, the class FastDeploy's
``SamplingParams(guided_decoding=...)`` takes."""

from standin_common import RecordingParams


class GuidedDecodingParams(RecordingParams):
    engine = "fastdeploy"
