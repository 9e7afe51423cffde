from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt


@csrf_exempt
def bare(request: HttpRequest) -> JsonResponse:
    """The baseline: what any Django view costs here, with the same middleware and server."""
    return JsonResponse({"status": "ok"})
