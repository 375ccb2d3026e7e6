// Small absl::Status helpers (Abseil 20220623 has no RETURN_IF_ERROR / ASSIGN_OR_RETURN).
#ifndef QUANTSERVE_ENGINE_STATUS_MACROS_H_
#define QUANTSERVE_ENGINE_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define QS_RETURN_IF_ERROR(expr)                 \
  do {                                           \
    ::absl::Status qs_status_ = (expr);          \
    if (!qs_status_.ok()) return qs_status_;     \
  } while (0)

#define QS_CONCAT_INNER_(a, b) a##b
#define QS_CONCAT_(a, b) QS_CONCAT_INNER_(a, b)

// QS_ASSIGN_OR_RETURN(auto x, MakeX());
#define QS_ASSIGN_OR_RETURN(lhs, expr) \
  QS_ASSIGN_OR_RETURN_IMPL_(QS_CONCAT_(qs_statusor_, __LINE__), lhs, expr)
#define QS_ASSIGN_OR_RETURN_IMPL_(var, lhs, expr) \
  auto var = (expr);                              \
  if (!var.ok()) return var.status();             \
  lhs = std::move(var).value()

#endif  // QUANTSERVE_ENGINE_STATUS_MACROS_H_
