# A variant's merged weights in the trail's own format, with its coefficients and a model card: the
# whole folder is the output (what the weights are called depends on the trail's family), so
# Snakemake tracks every file the export writes and removes a stale one before it reruns.
rule export:
    input:
        unpack(export_inputs),
    output:
        folder=directory(LAYOUT.export_dir("{model}", "{variant}")),
    log:
        LAYOUT.log("export", "{model}-{variant}"),
    benchmark:
        LAYOUT.benchmark("export", "{model}-{variant}")
    conda:
        "../../envs/torch.yaml"
    threads: 1
    params:
        cfg=model_json("export"),
        sources=variant_args,
    shell:
        "lcsc export --config-json {params.cfg:q} --threads {threads:q}"
        " --wildcards model={wildcards.model:q},variant={wildcards.variant:q}"
        " --model {wildcards.model:q} --variant {wildcards.variant:q} --manifest {input.manifest:q}"
        " {params.sources:q} --evaluations {input.evaluations:q} --real {input.real:q}"
        " --out-dir {output.folder:q} > {log:q} 2>&1"
