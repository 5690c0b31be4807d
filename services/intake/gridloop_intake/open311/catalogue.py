"""The district's category catalogue seen as Open311 services: one service per item."""

from __future__ import annotations

from gridloop_district import CategoryItem, District, UnknownCodeError

from .documents import ServiceDefinitionDoc, ServiceDoc
from .errors import not_found

# Reports reach the case log at once, so every service is "realtime" (not batch/blackbox).
SERVICE_TYPE = "realtime"


def _names(*named: object) -> list[str]:
    out: list[str] = []
    for n in named:
        for value in (getattr(n, "name", None), getattr(n, "name_en", None)):
            if value and value not in out:
                out.append(value)
    return out


def service_doc(district: District, item: CategoryItem) -> ServiceDoc:
    klass = district.class_of(item.code)
    sub = district.subclass_of(item.code)
    if klass is not None and sub is not None:
        group = f"{klass.name}/{sub.name}"
        keywords = _names(item, sub, klass)
    else:
        # OTHER stands outside the classes: it is its own group, placed later by a dispatcher.
        group = item.name
        keywords = _names(item)
    return ServiceDoc(
        service_code=item.code,
        service_name=item.name,
        description=item.name_en or item.name,
        metadata=False,
        type=SERVICE_TYPE,
        keywords=", ".join(keywords),
        group=group,
    )


def services(district: District) -> list[ServiceDoc]:
    """Every catalogue item in catalogue order, OTHER last."""
    return [service_doc(district, item) for item in district.categories]


def service_item(district: District, service_code: str) -> CategoryItem:
    try:
        return district.category(service_code)
    except UnknownCodeError:
        raise not_found(f"service_code {service_code!r} not found") from None


def service_definition(district: District, service_code: str) -> ServiceDefinitionDoc:
    item = service_item(district, service_code)
    return ServiceDefinitionDoc(service_code=item.code, attributes=())


def service_name(district: District, service_code: str | None) -> str | None:
    if service_code is None:
        return None
    try:
        return district.category(service_code).name
    except UnknownCodeError:  # a code a newer catalogue dropped: the row still shows its code
        return None
