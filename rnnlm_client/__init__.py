"""Python client for rnnlm-serve: `Client` (blocking) and `AsyncClient` (asyncio), typed results, typed errors.

Needs only httpx and pydantic (not torch): install the package and `from rnnlm_client import Client`.
"""
from rnnlm_client.client import AsyncClient, AsyncGenerationStream, Client, GenerationStream
from rnnlm_client.errors import (
                                 APIConnectionError,
                                 APIError,
                                 APITimeoutError,
                                 AuthenticationError,
                                 BadRequestError,
                                 ClientError,
                                 ConflictError,
                                 InternalServerError,
                                 JobCancelledError,
                                 JobError,
                                 JobFailedError,
                                 NotFoundError,
                                 OverloadedError,
                                 PermissionDeniedError,
                                 RateLimitError,
                                 RequestTooLargeError,
                                 StreamError,
)

__all__ = ["Client", "AsyncClient", "GenerationStream", "AsyncGenerationStream", "ClientError", "APIError",
           "BadRequestError", "AuthenticationError", "PermissionDeniedError", "NotFoundError", "ConflictError",
           "RequestTooLargeError", "RateLimitError", "OverloadedError", "InternalServerError", "StreamError",
           "APIConnectionError", "APITimeoutError", "JobError", "JobFailedError", "JobCancelledError"]
