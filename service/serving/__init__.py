"""The serving layer between the routes and the engine, one module per feature.

Each class is built once in the app's lifespan and injected into the routes (`service.deps`). A
serving method checks the request limits, resolves the model and the request's context once,
calls the batcher or the engine off the event loop, records the metrics and returns a response
schema; the routes only validate, call one method and return.
"""
from service.serving.completions import CompletionService
from service.serving.datasets import DatasetService
from service.serving.generation import GenerationService, GenerationStream
from service.serving.jobs import JobService
from service.serving.models import ModelService
from service.serving.next_word import NextWordService
from service.serving.scoring import ScoringService

__all__ = ["CompletionService", "DatasetService", "GenerationService", "GenerationStream", "JobService",
           "ModelService", "NextWordService", "ScoringService"]
