// Folds Transpose -> MatMul into the MatMul when both MatMul operands are activations of
// one rank >= 3 (attention: Q, K, V split into heads, K^T): oneDNN's matmul reads any
// strided operand, so the MatMul reads the Transpose's input through permuted strides
// and the copy disappears. MatMuls with a constant B (projections, possibly quantized)
// are left alone: their kernels want a plain A with rows folded.
#include <numeric>

#include "absl/container/flat_hash_map.h"
#include "engine/ops/dnnl_util.h"
#include "engine/passes/passes.h"

namespace qs {

absl::Status FoldTransposeIntoMatMul(Graph* graph) {
  // (A graph output counts as a reader: a Transpose whose output is also a graph output
  // is never folded.)
  absl::flat_hash_map<std::string, int> readers = CountReaders(*graph);
  const absl::flat_hash_map<std::string, size_t> producer = Producers(*graph);
  // The rank of an FP32 value (the MatMul kernel reads strided FP32 only), or -1.
  auto rank_of = [&](const std::string& v) -> int64_t {
    auto it = graph->value_info.find(v);
    return it != graph->value_info.end() && it->second.has_shape &&
                   it->second.dtype == DataType::kFloat32
               ? static_cast<int64_t>(it->second.shape.size())
               : -1;
  };

  std::vector<bool> removed(graph->nodes.size(), false);
  for (Node& mm : graph->nodes) {
    if (mm.op_type != "MatMul" || !mm.domain.empty() || mm.inputs.size() != 2 ||
        graph->initializers.count(mm.inputs[0]) || graph->initializers.count(mm.inputs[1]) ||
        mm.attrs.Has(kPermAAttr) || mm.attrs.Has(kPermBAttr)) {
      continue;
    }
    const int64_t ra = rank_of(mm.inputs[0]), rb = rank_of(mm.inputs[1]);
    if (ra < 3 || ra != rb) continue;
    for (int side = 0; side < 2; ++side) {
      auto p = producer.find(mm.inputs[side]);
      if (p == producer.end() || removed[p->second]) continue;
      const Node& t = graph->nodes[p->second];
      if (t.op_type != "Transpose" || !t.domain.empty() || t.inputs.size() != 1 ||
          readers[mm.inputs[side]] != 1) {
        continue;
      }
      std::vector<int64_t> perm = t.attrs.GetInts("perm");
      if (perm.empty()) {  // the default reverses the dims
        perm.resize(ra);
        std::iota(perm.rbegin(), perm.rend(), 0);
      }
      if (static_cast<int64_t>(perm.size()) != ra) continue;
      mm.attrs.SetInts(side == 0 ? kPermAAttr : kPermBAttr, perm);
      mm.inputs[side] = t.inputs[0];
      removed[p->second] = true;
    }
  }
  graph->RemoveNodes(removed);
  return absl::OkStatus();
}

}  // namespace qs
